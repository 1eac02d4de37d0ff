"""The sync worker with DI sessions end to end (issue 13 on top of issue 12), on SQLite and
PostgreSQL: users signed in through the service's DI flow, a `worker` caller that only ever
holds access tokens, the emulator over HTTP. The worker reads DI and garth sessions alike; the
service alone rotates the DI refresh token."""

from __future__ import annotations

from pathlib import Path

import pytest

from auth_service.crypto import Keyring
from auth_service.domain.models import SessionKind
from auth_service.domain.policies import LoginFlow
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_client.connect_api import ConnectApi
from garmin_emulator import DI_TOKEN_PATH, PROFILE_PATH, GarminEmulator
from garmin_emulator.wire import APP_HEADERS
from sync_worker.directory_sink import DirectorySink
from tests.fixtures.servers import Replica, ServiceFactory

from . import (
    RecordingSink,
    connect,
    make_config,
    run_expiring_mid_run,
    run_recorded,
    run_revoked_mid_run,
    status,
    stored_row,
    stored_tokens,
    summaries,
    upstream,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def di_service(service_factory: ServiceFactory) -> Replica:
    """A replica whose logins create DI sessions (the product's default flow)."""
    return service_factory.start(login_flow=LoginFlow.DI)


def test_a_di_session_whose_token_expires_mid_run_is_synced_after_one_refresh_lease(
    di_service: Replica,
    garmin: GarminEmulator,
    tmp_path: Path,
    database_url: str,
    keyring: Keyring,
) -> None:
    email = connect(di_service, garmin, "dia", activities=6)
    before = stored_tokens(database_url, keyring, "dia")
    assert before is not None
    assert before.kind is SessionKind.DI_OAUTH2
    version_before = status(di_service, "dia").session_version
    rotations_before = garmin.di_refresh_count(email)
    config = make_config(di_service.target, garmin, tmp_path, users=("dia",), page_size=2)
    result, calls = run_expiring_mid_run(config, garmin, tmp_path, email)

    assert result.outcome("dia") == "SYNCED"
    assert result.users["dia"]["items"] == 6
    assert result.users["dia"]["refreshed"] is True
    assert calls == ["RefreshLease", "ReleaseLease"]
    # One rotation, by the service; the worker never saw a refresh token to reuse.
    assert garmin.di_refresh_count(email) == rotations_before + 1
    assert garmin.refresh_token_reuses(email) == 0
    after = stored_tokens(database_url, keyring, "dia")
    assert after is not None
    assert after.kind is SessionKind.DI_OAUTH2
    assert after.di_client_id == before.di_client_id
    assert after.oauth2.refresh_token != before.oauth2.refresh_token
    assert status(di_service, "dia").session_version == version_before + 1
    # Every API call carried a DI bearer token and the Connect app's headers.
    api_calls = [call for call in garmin.api_calls if call.token_owner == email]
    assert api_calls
    assert {call.token_kind for call in api_calls} == {"di"}
    wanted = {name.lower() for name in APP_HEADERS}
    for call in api_calls:
        assert {name.lower() for name in call.app_headers} >= wanted
    with ConnectApi(upstream(garmin), after.domain) as api:
        assert api.get_json(PROFILE_PATH, after.oauth2.access_token)["userName"] == email


def test_a_refresh_lease_that_finds_garmin_down_asks_garmin_once(
    di_service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    """The service's refresh answered GARMIN_UNAVAILABLE: the worker must not send
    RefreshLease again (before the fix its client retried it as it retries an unreachable
    service, and each retry was one more refresh request to Garmin during its outage)."""
    email = connect(di_service, garmin, "dio", activities=6)
    config = make_config(di_service.target, garmin, tmp_path, users=("dio",), page_size=2)
    sink = RecordingSink(DirectorySink(tmp_path))
    before = garmin.request_count(DI_TOKEN_PATH)

    def garmin_fails_after_the_first_write(event: object) -> None:
        if garmin.request_count(DI_TOKEN_PATH) == before:
            garmin.expire_access_tokens(email)
            garmin.fail_next(DI_TOKEN_PATH, 503, count=100)

    sink.after_write = garmin_fails_after_the_first_write
    result, calls = run_recorded(config, sink=sink)

    assert result.outcome("dio") == "FAILED"
    assert calls == ["RefreshLease", "ReleaseLease"]
    assert garmin.request_count(DI_TOKEN_PATH) == before + 1
    after = status(di_service, "dio")
    assert after.state == pb.SESSION_STATE_ACTIVE
    assert not after.HasField("lease")


def test_a_revoked_di_session_ends_auth_expired_and_is_wiped(
    di_service: Replica, garmin: GarminEmulator, tmp_path: Path, database_url: str
) -> None:
    revoked = run_revoked_mid_run(di_service, garmin, tmp_path, "dib")
    email, result = revoked.email, revoked.run

    assert result.exit_code == 0
    assert result.outcome("dib") == "AUTH_EXPIRED"
    # The API's 401 makes the worker ask for a fresh token; Garmin answers the service's
    # refresh invalid_grant, so the service ends the session and the worker reports nothing.
    assert revoked.calls == ["RefreshLease"]
    assert garmin.refresh_token_reuses(email) == 0
    assert stored_row(database_url, "dib").session_ciphertext is None
    after = status(di_service, "dib")
    assert after.state == pb.SESSION_STATE_AUTH_EXPIRED
    assert "invalid_grant" in after.invalidated_reason
    assert not after.HasField("lease")
    assert len(summaries(tmp_path, "dib")) == 1
