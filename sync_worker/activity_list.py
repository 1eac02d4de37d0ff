"""Reading Garmin's activity list: which entries are activities the worker can store."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Final

from sync_worker.sinks import Activity

GARMIN_TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S"
# That format with every field at full width (ASCII digits only, unlike \d).
_GARMIN_TIME: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")
# The id becomes a file name and a database key: at most a signed 64-bit integer.
_MAX_ACTIVITY_ID: Final = 2**63 - 1
_MAX_ID_DIGITS: Final = len(str(_MAX_ACTIVITY_ID))


def parse_activity(raw: object) -> Activity | None:
    """An activity from Garmin's list, or None when it lacks a usable id."""
    if not isinstance(raw, dict):
        return None
    activity_id = raw.get("activityId")
    # ASCII digits only: str.isdigit() also accepts '²' and '①', which int() refuses, as it
    # does more than 4300 digits.
    if (
        isinstance(activity_id, str)
        and len(activity_id) <= _MAX_ID_DIGITS
        and activity_id.isascii()
        and activity_id.isdigit()
    ):
        activity_id = int(activity_id)
    # The id becomes a file name and a key: a positive integer or nothing.
    if isinstance(activity_id, bool) or not isinstance(activity_id, int):
        return None
    if not 0 < activity_id <= _MAX_ACTIVITY_ID:
        return None
    return Activity(activity_id, raw, _start_time(raw))


def _start_time(raw: dict[str, Any]) -> datetime | None:
    text = raw.get("startTimeGMT")
    if isinstance(text, str):
        # Garmin's usual form, read by the C parser (strptime costs ~6 us, 20 times a user);
        # for these strings both give the same time, and both refuse the same impossible ones.
        if _GARMIN_TIME.fullmatch(text, 0, 19):
            try:
                return datetime.fromisoformat(text[:19]).replace(tzinfo=UTC)
            except ValueError:
                pass
        for candidate in (text[:19], text):
            try:
                return datetime.strptime(candidate, GARMIN_TIME_FORMAT).replace(tzinfo=UTC)
            except ValueError:
                continue
    millis = raw.get("beginTimestamp")
    if isinstance(millis, int) and not isinstance(millis, bool) and millis > 0:
        try:
            return datetime.fromtimestamp(millis / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None
