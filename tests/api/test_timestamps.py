"""to_timestamp: the same Timestamp a message makes of a datetime, for less."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import timestamp_pb2

from auth_service.api.convert import to_timestamp


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 12, 3, 12, 34, 56, 789012, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),  # before the epoch
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 6, 1, 8, 0, tzinfo=timezone(timedelta(hours=-7))),  # not UTC
        datetime(2026, 6, 1, 8, 0, 0, 1, tzinfo=UTC).replace(tzinfo=None),  # naive: as UTC
    ],
)
def test_to_timestamp_matches_from_datetime(value: datetime) -> None:
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(value)
    assert to_timestamp(value) == expected


def test_none_stays_unset() -> None:
    assert to_timestamp(None) is None
