"""A lease id is a bearer secret: every value holding one hides it in its repr (LeaseView's
lease_id is repr=False). Before, LeaseRelease, the release a LeaseNextSession carries, showed
it; log redaction would not have caught it either (32 characters, under its opaque-string
length)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from auth_service.services.lease_handover import LeaseRelease


def test_lease_release_repr_hides_the_lease_id() -> None:
    lease_id = secrets.token_urlsafe(24)  # as the service issues them: 32 characters
    release = LeaseRelease(lease_id, datetime.now(UTC), timedelta(seconds=30))
    assert lease_id not in repr(release)
    assert lease_id not in str(release)
    assert "synced_through" in repr(release)  # the rest still shows
