"""benchmarks/redaction_cost.py, a short run: both ways are measured in every round and their
ratio printed (the figures are the machine's, so only their presence is asserted)."""

from __future__ import annotations

import pytest

from benchmarks import redaction_cost
from tests.benchmarks.runs import BenchmarkRun


def test_both_ways_are_measured_side_by_side(capsys: pytest.CaptureFixture[str]) -> None:
    assert redaction_cost.main(["--lines", "400", "--rounds", "1"]) == 0

    figures = BenchmarkRun.parse(capsys.readouterr().out).figures
    assert figures["redact_us_per_line_round1"] > 0
    assert figures["redact_every_pattern_us_per_line_round1"] > 0
    assert figures["redact_vs_every_pattern_round1"] > 0
