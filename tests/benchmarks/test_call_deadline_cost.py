"""benchmarks/call_deadline_cost.py, a short run: both designs are measured in every round and
their ratio printed (the figures are the machine's, so only their presence and sign are
asserted)."""

from __future__ import annotations

import pytest

from benchmarks import call_deadline_cost
from tests.benchmarks.runs import BenchmarkRun


def test_both_designs_are_measured_side_by_side(capsys: pytest.CaptureFixture[str]) -> None:
    assert call_deadline_cost.main(["--calls", "500", "--rounds", "1"]) == 0

    figures = BenchmarkRun.parse(capsys.readouterr().out).figures
    assert figures["call_deadline_watchdog_us_round1"] > 0
    assert figures["call_deadline_thread_per_call_us_round1"] > 0
    assert figures["call_deadline_watchdog_vs_thread_round1"] > 0
