"""ReportRefreshed never puts back a DI refresh token the service rotated away. A worker_full
holder is granted refresh token R1; after a 401 it calls RefreshLease (README step 3), which
rotates R1 to R2 at Garmin. Before, the holder's report of the session it was granted (still
R1) was stored over R2: the only live refresh token was lost and the next refresh ended a good
session (invalid_grant). A DI report now names the version it refreshed, and one of a version
the service refreshed since is refused (INVALID_ARGUMENT session_version), as is one without a
version. Real gRPC, the emulator over real HTTP."""

from __future__ import annotations

from functools import partial

import grpc
import pytest
from sqlalchemy.orm import Session, sessionmaker

from auth_service.api import convert
from auth_service.crypto import Keyring
from auth_service.domain.clock import SystemClock
from auth_service.storage.secrets import SecretBox
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_client.session_proto import tokens_to_proto
from garmin_emulator import GarminEmulator
from tests.fixtures.di_upstream import both_providers
from tests.fixtures.servers import ServiceFactory, expect_failure
from tests.leases import stored_tokens
from tests.refresh import DiAccounts

pytestmark = pytest.mark.timeout(120)


def test_report_refreshed_does_not_put_back_a_rotated_away_refresh_token(
    service_factory: ServiceFactory,
    garmin: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    keyring: Keyring,
) -> None:
    box = SecretBox(keyring)
    accounts = DiAccounts(garmin, SystemClock(), db_sessionmaker, box)
    replica = service_factory.start(provider=both_providers(service_factory.base_settings.upstream))
    accounts.seed("rr-stale")
    granted = replica.call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="rr-stale", holder="w"), role="worker_full"
    )
    lease_id = granted.lease.lease_id
    # Garmin refused the access token: README step 3, RefreshLease (one rotation at Garmin).
    replica.call(
        "RefreshLease",
        pb.RefreshLeaseRequest(lease_id=lease_id, session_version=granted.status.session_version),
        role="worker_full",
    )
    rotated = stored_tokens(db_sessionmaker, box, "rr-stale")
    assert rotated is not None
    assert rotated.oauth2.refresh_token != granted.session.oauth2.refresh_token

    # The holder hands back the session it was granted: older than the stored one, and its
    # refresh token is dead at Garmin. Refused with its version, and without one.
    for version in (granted.status.session_version, 0):
        report = pb.ReportRefreshedRequest(
            lease_id=lease_id, session=granted.session, session_version=version
        )
        refused = expect_failure(
            partial(replica.call, "ReportRefreshed", report, role="worker_full")
        )
        assert (refused.code, refused.field_violations) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            ["session_version"],
        )

    stored = stored_tokens(db_sessionmaker, box, "rr-stale")
    assert stored is not None
    kept = stored.oauth2.refresh_token == rotated.oauth2.refresh_token
    assert kept, (
        "ReportRefreshed replaced the live, rotated refresh token with the dead one it rotated away"
    )


def test_a_holder_that_refreshed_the_stored_version_itself_is_stored(
    service_factory: ServiceFactory,
    garmin: GarminEmulator,
    db_sessionmaker: sessionmaker[Session],
    keyring: Keyring,
) -> None:
    box = SecretBox(keyring)
    accounts = DiAccounts(garmin, SystemClock(), db_sessionmaker, box)
    upstream = both_providers(service_factory.base_settings.upstream)
    replica = service_factory.start(provider=upstream)
    accounts.seed("rr-own")
    granted = replica.call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="rr-own", holder="w"), role="worker_full"
    )
    # A legacy holder refreshes by itself (the only one to use the granted refresh token).
    own = upstream.refresh(convert.tokens_from_proto(granted.session, "session"))

    answer = replica.call(
        "ReportRefreshed",
        pb.ReportRefreshedRequest(
            lease_id=granted.lease.lease_id,
            session=tokens_to_proto(own),
            session_version=granted.status.session_version,
        ),
        role="worker_full",
    )

    assert answer.status.session_version == granted.status.session_version + 1
    stored = stored_tokens(db_sessionmaker, box, "rr-own")
    assert stored is not None
    assert stored.oauth2.refresh_token == own.oauth2.refresh_token
