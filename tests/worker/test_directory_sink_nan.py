"""The directory sink writes strict JSON: a summary's NaN and infinities become null.

Before: the summary's encoder left NaN and the infinities to json.dumps with its default
allow_nan=True, and `<activityId>.json` held the bare tokens NaN / Infinity, which are no
JSON (RFC 8259): jq, JavaScript's JSON.parse, Go's encoding/json and json.loads with
parse_constant refusing them all failed on the file. README (The sync worker, Sinks): the
summaries are JSON files, and "A summary's NaN and infinities (Garmin's JSON may carry them)
are stored as JSON `null`" by either sink. A summary with none keeps its exact bytes (an
unchanged one is skipped, not rewritten)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garmin_emulator import GarminEmulator
from sync_worker.sinks import summary_bytes
from sync_worker.summary_json import indented_json
from tests.fixtures.servers import Replica
from tests.worker import connect, email_of, make_config, run_worker
from tests.worker.test_summary_json import nested, parsed_json, reference

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def backend() -> str:
    return "sqlite"


def _strict(constant: str) -> None:
    raise ValueError(f"not JSON: {constant}")


def test_the_directory_sink_writes_valid_json_for_nan_and_infinities(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    connect(service, garmin, "odd")
    fields = {"averageHR": math.nan, "maxSpeed": math.inf, "minElevation": -math.inf}
    garmin.add_activities(email_of("odd"), [fields])
    config = make_config(service.target, garmin, tmp_path, users=("odd",))

    outcomes = [run_worker(config).outcome("odd") for _ in range(2)]

    # The second run finds the same bytes: nothing rewritten.
    assert outcomes == ["SYNCED", "NOTHING_NEW"]
    [path] = (tmp_path / "odd" / "activities").glob("*.json")
    text = path.read_text(encoding="utf-8")
    try:
        summary = json.loads(text, parse_constant=_strict)
    except ValueError as exc:
        bad = [line.strip() for line in text.splitlines() if "NaN" in line or "Infinity" in line]
        pytest.fail(f"{path.name} is not valid JSON ({exc}): {bad}")
    assert {name: summary[name] for name in fields} == dict.fromkeys(fields)


@settings(max_examples=300, deadline=None)
@given(parsed_json)
def test_without_nan_indented_json_is_json_dumps_byte_for_byte(value: Any) -> None:
    """allow_nan=False as in json.dumps: the same text, or ValueError for both."""
    try:
        expected = json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
    except ValueError:
        with pytest.raises(ValueError, match="JSON compliant"):
            indented_json(value, allow_nan=False)
        return
    assert indented_json(value, allow_nan=False) == expected


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), parsed_json, max_size=5))
def test_a_summary_without_nan_keeps_its_bytes_and_one_with_nan_is_strict_json(
    summary: dict[str, Any],
) -> None:
    text = summary_bytes(summary).decode()
    try:
        unchanged = reference(summary) + "\n"
        json.loads(unchanged, parse_constant=_strict)
    except (ValueError, UnicodeEncodeError):
        json.loads(text, parse_constant=_strict)  # cleaned, and strict JSON
    else:
        assert text == unchanged


def test_a_deep_summary_with_a_nan_is_written_as_strict_json() -> None:
    """The cleaning copies without recursion (sinks.mapped_leaves): 800 levels."""
    summary = {"laps": nested(800), "bad": math.nan}
    text = summary_bytes(summary).decode()
    assert json.loads(text, parse_constant=_strict)["bad"] is None
