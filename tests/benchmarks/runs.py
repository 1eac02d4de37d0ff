"""Running a benchmark as an operator runs it (`python -m benchmarks.NAME ...`) against the
test PostgreSQL server, and reading what it printed."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class BenchmarkRun:
    """A benchmark's standard output, its `figure` lines by name and its `target` names."""

    stdout: str
    figures: dict[str, float]
    targets: set[str]


def run_benchmark(name: str, pg_admin_url: str, *args: str, timeout: float = 100) -> BenchmarkRun:
    """`python -m benchmarks.<name> <args>` on the test server; the run must succeed."""
    env = {**os.environ, "BENCH_POSTGRES_URL": pg_admin_url}
    command = [sys.executable, "-m", f"benchmarks.{name}", *args]
    run = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line.split() for line in run.stdout.splitlines()]
    return BenchmarkRun(
        stdout=run.stdout,
        figures={words[1]: float(words[2]) for words in lines if words[:1] == ["figure"]},
        targets={words[1] for words in lines if words[:1] == ["target"]},
    )
