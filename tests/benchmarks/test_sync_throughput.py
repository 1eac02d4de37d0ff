"""benchmarks/sync_throughput.py at a tiny size, run as an operator runs it: the service, the
emulator and the real `garmin-sync-worker` processes sync every user once, one worker or
several at once (--worker-processes, a CronJob's parallelism), and the CPU and wall targets
are printed (their verdicts depend on the machine's load, so they are not asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import ext4_volume
from benchmarks.harness import ServiceTree
from benchmarks.sync_throughput import parse_args
from tests.benchmarks.runs import run_benchmark
from tests.fixtures.database import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

TINY = ["--quick", "--users", "8", "--concurrency", "4", "--latency", "0.01"]


@pytest.mark.parametrize("processes", [1, 2])
def test_every_user_is_synced_once_by_one_or_several_workers(
    pg_server: PostgresServer, pg_admin_url: str, processes: int
) -> None:
    # The second also with the service confined to one CPU (--pin-cpus).
    pin = ["--pin-cpus", str(max(os.sched_getaffinity(0)))] if processes == 2 else []
    run = run_benchmark(
        "sync_throughput", pg_admin_url, *TINY, "--worker-processes", str(processes), *pin
    )
    stdout, figures = run.stdout, run.figures

    assert figures["users"] == 8, stdout
    assert figures["garmin_requests_per_user"] == 1, stdout
    assert figures["items_per_user"] == 20, stdout
    # Eight users' CPU less a start-up's is the noise of two process start-ups, and may come
    # out negative: at this size only the figure's presence says something; the start-up
    # it is measured against must have been measured.
    assert "worker_cpu_per_user" in figures, stdout
    assert figures["worker_startup_cpu"] > 0, stdout
    assert {"sync_cpu_ms_per_user", "sync_wall_vs_ideal"} <= run.targets.keys()
    assert ("2 worker processes at once, 2 threads each" in stdout) == (processes == 2)
    assert ("every server process confined to one CPU" in stdout) == (processes == 2)


@pytest.mark.parametrize(
    "args",
    [
        ["--worker-processes", "3"],  # 16 threads do not split over 3 processes
        ["--worker-processes", "0"],
        ["--worker-processes", "2", "--profile", "profiles"],  # py-spy samples one
        ["--against", "HEAD", "--profile", "profiles"],  # a profile is of one run
        ["--against", "HEAD", "--pairs", "0"],
        ["--ext4-volume", "--out-base", "outputs"],  # the volume is where they go
        ["--ext4-volume", "--sink-database"],
    ],
)
def test_option_combinations_that_cannot_run_are_refused(args: list[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        parse_args(args)

    assert refused.value.code == 2


@pytest.mark.timeout(300)
def test_against_a_revision_runs_pairs_and_prints_the_ratios(
    pg_server: PostgresServer, pg_admin_url: str
) -> None:
    run = run_benchmark(
        "sync_throughput", pg_admin_url, *TINY, "--against", "HEAD", "--pairs", "1", timeout=280
    )
    stdout, figures = run.stdout, run.figures

    assert "service and worker code: git " in stdout, stdout  # the base: HEAD, exported
    assert "service and worker code: working tree at " in stdout, stdout
    for name in ("worker_cpu_per_user", "sync_cpu_ms_per_user", "sync_wall_vs_ideal"):
        assert f"{name}_test_vs_base" in figures, stdout


def test_an_exported_revision_is_what_the_worker_and_the_service_import(tmp_path: Path) -> None:
    tree = ServiceTree(tmp_path, "HEAD")
    # Not from this checkout's directory: the installed (editable) tree is what must lose.
    code = "import auth_service, garmin_client, sync_worker as w; print(w.__file__)"
    imported = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **tree.environment()},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()

    assert tree.pythonpath is not None
    assert imported.startswith(tree.pythonpath)


def test_the_worker_writes_on_a_fresh_ext4_volume_when_asked(
    pg_server: PostgresServer, pg_admin_url: str
) -> None:
    if (why := ext4_volume.unavailable()) is not None:
        pytest.skip(why)

    run = run_benchmark("sync_throughput", pg_admin_url, *TINY, "--ext4-volume", "64")

    assert "--out directories in a fresh 64 MiB ext4 volume" in run.stdout
    assert run.figures["users"] == 8, run.stdout
    assert run.figures["items_per_user"] == 20, run.stdout
