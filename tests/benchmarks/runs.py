"""Running a benchmark as an operator runs it (`python -m benchmarks.NAME ...`) against the
test PostgreSQL server, and reading what it printed."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class BenchmarkRun:
    """A benchmark's standard output, its `figure` values by name and its `target` verdicts
    (PASS or FAIL) by name."""

    stdout: str
    figures: dict[str, float]
    targets: dict[str, str]

    @classmethod
    def parse(cls, stdout: str) -> BenchmarkRun:
        """What a benchmark printed (harness.Report's `figure NAME VALUE UNIT` and `target
        NAME MEASURED GOAL VERDICT` lines)."""
        lines = [line.split() for line in stdout.splitlines()]
        return cls(
            stdout=stdout,
            figures={words[1]: float(words[2]) for words in lines if words[:1] == ["figure"]},
            targets={words[1]: words[-1] for words in lines if words[:1] == ["target"]},
        )


def run_benchmark(name: str, pg_admin_url: str, *args: str, timeout: float = 100) -> BenchmarkRun:
    """`python -m benchmarks.<name> <args>` on the test server; the run must succeed."""
    env = {**os.environ, "BENCH_POSTGRES_URL": pg_admin_url}
    command = [sys.executable, "-m", f"benchmarks.{name}", *args]
    run = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return BenchmarkRun.parse(run.stdout)
