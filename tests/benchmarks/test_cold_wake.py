"""benchmarks/cold_wake.py, one run per pause: it prints the work's CPU and wall time after
every pause and each pause's ratio to the back-to-back run (the verdicts are the machine's,
so only their presence and sign are asserted)."""

from __future__ import annotations

import pytest

from benchmarks import cold_wake
from tests.benchmarks.runs import BenchmarkRun


def test_every_pause_is_measured(capsys: pytest.CaptureFixture[str]) -> None:
    assert cold_wake.main(["--repeats", "1"]) == 0

    figures = BenchmarkRun.parse(capsys.readouterr().out).figures
    for pause in ("0ms", "1ms", "10ms", "50ms", "300ms", "1200ms"):
        assert figures[f"cold_wake_cpu_after_{pause}"] > 0
        assert figures[f"cold_wake_wall_after_{pause}"] > 0
        if pause != "0ms":
            assert figures[f"cold_wake_cpu_ratio_{pause}"] > 0
