"""Made-up activities as Garmin's activity list shows them, and the files it downloads."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

from garmin_emulator.state import EmulatedUser, EmulatorState

GARMIN_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

# typeKey, typeId, name, speed (m/s): cycled through so a user's list looks varied.
_ACTIVITY_KINDS = (
    ("running", 1, "Run", 3.0),
    ("cycling", 2, "Ride", 7.0),
    ("lap_swimming", 27, "Pool Swim", 1.1),
    ("walking", 9, "Walk", 1.4),
)


def _garmin_time(moment: datetime) -> str:
    return moment.strftime(GARMIN_TIME_FORMAT)


def _fake_fit_zip(activity_id: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{activity_id}_ACTIVITY.fit", b".FIT" + str(activity_id).encode())
    return buffer.getvalue()


def new_activity(
    state: EmulatorState,
    user: EmulatedUser,
    start: datetime,
    index: int,
    override: dict[str, Any],
) -> dict[str, Any]:
    """The user's `index`-th activity starting at `start`, with its file stored.

    `override`'s keys replace the generated fields (a ``startTimeGMT`` may be a datetime or
    Garmin's "YYYY-MM-DD HH:MM:SS"). The caller holds the state's lock.
    """
    start_gmt = override.pop("startTimeGMT", start)
    if isinstance(start_gmt, str):
        start_gmt = datetime.strptime(start_gmt, GARMIN_TIME_FORMAT).replace(tzinfo=UTC)
    start_gmt = start_gmt.astimezone(UTC).replace(microsecond=0)
    type_key, type_id, label, speed = _ACTIVITY_KINDS[index % len(_ACTIVITY_KINDS)]
    duration = 1800.0 + 60.0 * (index % 30)
    activity_id = int(override.pop("activityId", next(state.activity_ids)))
    activity: dict[str, Any] = {
        "activityId": activity_id,
        "activityName": f"{label} {index + 1}",
        "description": None,
        "startTimeLocal": _garmin_time(start_gmt + user.utc_offset),
        "startTimeGMT": _garmin_time(start_gmt),
        "activityType": {"typeId": type_id, "typeKey": type_key, "parentTypeId": 17},
        "eventType": {"typeId": 9, "typeKey": "uncategorized", "sortOrder": 10},
        "distance": round(duration * speed, 1),
        "duration": duration,
        "elapsedDuration": duration + 30.0,
        "movingDuration": duration - 20.0,
        "averageSpeed": speed,
        "averageHR": 140.0,
        "maxHR": 171.0,
        "calories": round(duration / 4, 1),
        "ownerId": user.profile_id,
        "ownerDisplayName": user.display_name,
        "beginTimestamp": int(start_gmt.timestamp() * 1000),
        "hasPolyline": type_key != "lap_swimming",
        "manufacturer": "GARMIN",
    }
    activity.update(override)
    state.files[activity_id] = (user.email.lower(), _fake_fit_zip(activity_id))
    return activity


def local_date_within(activity: Mapping[str, Any], first: date | None, last: date | None) -> bool:
    """Whether the activity's local start day is within [first, last] (None: unbounded)."""
    local_day = date.fromisoformat(activity["startTimeLocal"][:10])
    return (first is None or local_day >= first) and (last is None or local_day <= last)
