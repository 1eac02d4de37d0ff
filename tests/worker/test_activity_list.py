"""An activity's start time reads as strptime with Garmin's format read it, whichever parser
the worker uses for it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync_worker.activity_list import GARMIN_TIME_FORMAT, parse_activity


def by_strptime(text: str) -> datetime | None:
    for candidate in (text[:19], text):
        try:
            return datetime.strptime(candidate, GARMIN_TIME_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def start_of(text: str) -> datetime | None:
    activity = parse_activity({"activityId": 1, "startTimeGMT": text})
    assert activity is not None
    return activity.start_time


def two(low: int, high: int) -> st.SearchStrategy[str]:
    return st.integers(low, high).map(lambda n: f"{n:02d}")


# Garmin's form with fields in and out of range (month 13, 30 February, 24:00, second 60),
# sometimes followed by something (fractions, a zone).
garmin_like = st.builds(
    lambda y, mo, d, h, mi, s, tail: f"{y}-{mo}-{d} {h}:{mi}:{s}{tail}",
    st.integers(1, 9999).map(lambda n: f"{n:04d}"),
    two(0, 13),
    two(0, 32),
    two(0, 25),
    two(0, 61),
    two(0, 61),
    st.sampled_from(["", ".0", ".123", "Z", "+01:00", " ", "x"]),
)


@settings(max_examples=500, deadline=None)
@given(garmin_like)
def test_start_times_read_as_strptime_reads_them(text: str) -> None:
    assert start_of(text) == by_strptime(text)


@pytest.mark.parametrize(
    "text",
    [
        "2026-03-01 07:30:00",
        "2024-02-29 23:59:59",
        "2026-02-29 10:00:00",
        "2026-3-1 7:30:00",
        "2026-03-01T07:30:00",
        "2026-03-01 07:30",
        "٢٠٢٦-03-01 07:30:00",
        "",
    ],
)
def test_start_time_edge_cases_read_as_strptime_reads_them(text: str) -> None:
    assert start_of(text) == by_strptime(text)
