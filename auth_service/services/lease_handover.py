"""A worker moving on to its next user: ReleaseLease and LeaseNextSession in one call.

A worker draining the due sessions ends each user's lease and asks for the next one. With
`release` set, LeaseNextSession does both in one round trip: half the RPCs (and half the
service's per-call work) per synced user.

The release comes first and is exactly a ReleaseLease: validated the same way, recorded as a
ReleaseLease. Every field of the call is checked before anything is done, so INVALID_ARGUMENT
means nothing happened. The release and the first grant are one single write (on PostgreSQL
one statement, auth_service.storage.lease_trail.handover_with_trail): if the release is
refused (LEASE_LOST), the call fails with that and nothing is granted; if the write fails
(UNAVAILABLE), neither happened. (A release reporting Garmin's 429, `garmin_retry_after`, is
a transaction of its own with the cooldown it starts, committed before the grants.) Once the
release is done it stands, and whatever follows is the grant's: its errors are
LeaseNextSession's own, which never include LEASE_LOST (services.leases skips a due session
whose lease ends under it). So a caller tells from the answer alone whether its release
happened, except when the connection to the database was lost during the commit, as for a
ReleaseLease.

One statement instead of a release and a grant of their own (`thread_costs --workload
lease_handover --in-flight 8 --against daac961`, three pairs): 1.44, 1.50, 1.46 -> 1.22, 1.22,
1.20 ms of service CPU per call, 550, 531, 533 -> 581, 571, 571 calls/s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from auth_service.domain.models import LeaseGrant, SessionStatusView
from auth_service.domain.validation import raise_if_any
from auth_service.services.leases import LeaseService

# The field names of the release inside a LeaseNextSessionRequest.
RELEASE_FIELDS = "release."


@dataclass(frozen=True)
class LeaseRelease:
    """The lease a caller ends on its way to the next: a ReleaseLease's fields."""

    # A bearer secret (whoever holds it ends the lease): never in a repr, as LeaseView's.
    lease_id: str = field(repr=False)
    # Set when the sync succeeded up to this instant; None counts as an attempt.
    synced_through: datetime | None
    # Set when the sync stopped at Garmin's 429 on the Connect API: the wait it asked for.
    garmin_retry_after: timedelta | None = None


@dataclass(frozen=True)
class Handover:
    """The released user's status, and the next grant (None when nothing is due)."""

    released: SessionStatusView
    grant: LeaseGrant | None


class LeaseHandover:
    """ReleaseLease, then LeaseNextSession, for one call."""

    def __init__(self, leases: LeaseService) -> None:
        self._leases = leases

    def release_and_lease_next(
        self,
        release: LeaseRelease,
        holder: str,
        ttl: timedelta | None,
        min_sync_interval: timedelta | None,
        *,
        user_id_prefix: str | None = None,
        with_refresh_token: bool = True,
    ) -> Handover:
        leases = self._leases
        raise_if_any(
            leases.release_violations(
                release.lease_id,
                release.synced_through,
                release.garmin_retry_after,
                fields=RELEASE_FIELDS,
            ),
            leases.next_violations(holder, ttl, min_sync_interval),
        )
        released, grant = leases.release_and_lease_next_checked(
            release.lease_id,
            release.synced_through,
            holder,
            ttl,
            min_sync_interval,
            user_id_prefix=user_id_prefix,
            with_refresh_token=with_refresh_token,
            garmin_retry_after=release.garmin_retry_after,
        )
        return Handover(released=released, grant=grant)
