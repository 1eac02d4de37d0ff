"""garmin_auth_garmin_calls_suppressed_total counts calls answered GARMIN_RATE_LIMITED without
Garmin (README, Metrics): one per call. Before, a refresh waiting on another replica's claim
re-read the gate's refusal on every 50 ms poll, and each read counted one suppression, whether
or not the call was refused in the end (a RefreshLease refused once counted 28-29). The
refusal is now read only when the caller would call Garmin next."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, update

from auth_service.storage.database import create_engine_for
from auth_service.storage.models import GarminAuthenticationState, GarminEndpointBreaker
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.fixtures.servers import ServiceFactory, expect_failure
from tests.service.test_metrics import moved, with_metrics
from tests.service.test_status_import_delete import garmin_tokens, import_tokens


def test_one_refused_refresh_lease_counts_one_suppressed_call(
    service_factory: ServiceFactory, garmin: GarminEmulator, database_url: str
) -> None:
    replica = with_metrics(service_factory)
    import_tokens(replica, "ann", garmin_tokens(replica, garmin, "ann@example.com"))
    grant = replica.call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="ann", holder="w-1"), role="worker"
    )

    # Another replica's refresh of ann is with Garmin (its claim lives 1.5 s more), and
    # meanwhile another account's 429s opened the exchange endpoint's breaker for a minute.
    engine = create_engine_for(database_url)
    now = datetime.now(UTC)
    with engine.begin() as connection:
        connection.execute(
            update(GarminAuthenticationState)
            .where(GarminAuthenticationState.user_id == "ann")
            .values(
                refresh_claim_id="other-replica-claim",
                refresh_claimed_until=now + timedelta(seconds=1.5),
            )
        )
        connection.execute(
            insert(GarminEndpointBreaker).values(
                endpoint="oauth_exchange",
                window_started_at=now,
                rate_limited_calls=5,
                open_until=now + timedelta(seconds=60),
                probe_until=None,
            )
        )
    engine.dispose()

    def refresh_lease() -> None:
        failure = expect_failure(
            lambda: replica.call(
                "RefreshLease",
                pb.RefreshLeaseRequest(
                    lease_id=grant.lease.lease_id,
                    session_version=grant.status.session_version,
                ),
                role="worker",
            )
        )
        assert failure.reason == "GARMIN_RATE_LIMITED"

    delta = moved(replica, refresh_lease)
    suppressed = delta(
        "garmin_auth_garmin_calls_suppressed_total",
        endpoint="oauth_exchange",
        reason="breaker_open",
    )
    # One call, answered GARMIN_RATE_LIMITED once, without Garmin.
    assert suppressed == 1
