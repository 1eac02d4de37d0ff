"""benchmarks/sync_throughput.py at a tiny size, run as an operator runs it: the service, the
emulator and the real `garmin-sync-worker` processes sync every user once, one worker or
several at once (--worker-processes, a CronJob's parallelism), and the CPU and wall targets
are printed (their verdicts depend on the machine's load, so they are not asserted)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks.sync_throughput import parse_args
from tests.fixtures.database import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

TINY = ["--quick", "--users", "8", "--concurrency", "4", "--latency", "0.01"]


def run_benchmark(pg_admin_url: str, *args: str) -> tuple[str, dict[str, float]]:
    """sync_throughput, tiny: its output and its figures (the run must succeed)."""
    env = {**os.environ, "BENCH_POSTGRES_URL": pg_admin_url}
    command = [sys.executable, "-m", "benchmarks.sync_throughput", *TINY, *args]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=100, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    figures = {
        line.split()[1]: float(line.split()[2])
        for line in run.stdout.splitlines()
        if line.startswith("figure ")
    }
    return run.stdout, figures


@pytest.mark.parametrize("processes", [1, 2])
def test_every_user_is_synced_once_by_one_or_several_workers(
    pg_server: PostgresServer, pg_admin_url: str, processes: int
) -> None:
    stdout, figures = run_benchmark(pg_admin_url, "--worker-processes", str(processes))
    targets = {line.split()[1] for line in stdout.splitlines() if line.startswith("target ")}

    assert figures["users"] == 8, stdout
    assert figures["garmin_requests_per_user"] == 1, stdout
    assert figures["items_per_user"] == 20, stdout
    assert figures["worker_cpu_per_user"] > 0, stdout
    assert {"sync_cpu_ms_per_user", "sync_wall_vs_ideal"} <= targets
    assert ("2 worker processes at once, 2 threads each" in stdout) == (processes == 2)


@pytest.mark.parametrize(
    "args",
    [
        ["--worker-processes", "3"],  # 16 threads do not split over 3 processes
        ["--worker-processes", "0"],
        ["--worker-processes", "2", "--profile", "profiles"],  # py-spy samples one
    ],
)
def test_worker_processes_that_cannot_run_are_refused(args: list[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        parse_args(args)

    assert refused.value.code == 2
