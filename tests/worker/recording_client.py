"""The worker's real auth client, noting the holder calls that refresh or end a lease
(LeaseNextSession carrying a release among them)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sync_worker.client import AuthClient
from sync_worker.lease_grants import AccessToken, LeasedSession, SessionStatus

if TYPE_CHECKING:
    from sync_worker.client import Release


class RecordingClient(AuthClient):
    """The real client, noting the order of the calls that end a lease."""

    calls: list[str]

    def refresh_lease(self, lease_id: str, session_version: int) -> AccessToken:
        self.calls.append("RefreshLease")
        return super().refresh_lease(lease_id, session_version)

    def release_lease(
        self,
        lease_id: str,
        synced_through: datetime | None,
        garmin_retry_after: float | None = None,
    ) -> SessionStatus:
        self.calls.append("ReleaseLease")
        return super().release_lease(lease_id, synced_through, garmin_retry_after)

    def lease_next_session(
        self,
        holder: str,
        ttl: timedelta | None,
        min_sync_interval: timedelta | None,
        release: Release | None = None,
    ) -> LeasedSession | None:
        if release is not None:
            self.calls.append("LeaseNextSession+release")
        return super().lease_next_session(holder, ttl, min_sync_interval, release)

    def report_invalidated(
        self, lease_id: str, reason: str, session_version: int = 0
    ) -> SessionStatus:
        self.calls.append("ReportInvalidated")
        return super().report_invalidated(lease_id, reason, session_version)
