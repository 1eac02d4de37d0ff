"""The sync worker end to end, in process, on SQLite and PostgreSQL: a real auth service
over gRPC (with its real garth adapter), the worker on access tokens only, and the Garmin
emulator over HTTP."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs

import grpc
import pytest

from auth_service.crypto import Keyring
from auth_service.domain.models import LoginSucceeded
from auth_service.upstream.garth.provider import GarthUpstream
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_client.answer_cap import MAX_ANSWER_BYTES
from garmin_client.connect_api import ConnectApi
from garmin_client.session_proto import tokens_to_proto
from garmin_emulator import (
    ACTIVITIES_PATH,
    DOWNLOAD_PREFIX,
    PROFILE_PATH,
    GarminEmulator,
)
from sync_worker.client import AuthClient
from sync_worker.client_errors import AuthServiceError
from sync_worker.directory_sink import DirectorySink
from sync_worker.lease_grants import SessionStatus
from tests.fixtures.servers import Replica
from tests.worker.recording_client import RecordingClient

from . import (
    PASSWORD,
    RecordingSink,
    activity_files,
    connect,
    email_of,
    make_config,
    run_expiring_mid_run,
    run_recorded,
    run_revoked_mid_run,
    run_worker,
    status,
    stored_row,
    stored_tokens,
    summaries,
    upstream,
    utc,
)

pytestmark = pytest.mark.timeout(60)


def test_a_valid_session_is_synced_with_no_manual_step(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    connect(service, garmin, "ann", activities=4)
    created = garmin.add_activities(email_of("ann"), 1, first_start=datetime.now(UTC))
    newest = utc(created[0]["startTimeGMT"])

    result = run_worker(make_config(service.target, garmin, tmp_path, users=("ann",)))

    assert result.exit_code == 0
    assert result.users["ann"]["outcome"] == "SYNCED"
    assert result.users["ann"]["items"] == 5
    assert result.users["ann"]["refreshed"] is False
    assert result.summary["summary"]["SYNCED"] == 1
    assert len(summaries(tmp_path, "ann")) == 5
    after = status(service, "ann")
    assert after.state == pb.SESSION_STATE_ACTIVE
    assert not after.HasField("lease")
    assert after.synced_through.ToDatetime(tzinfo=UTC) == newest
    assert after.HasField("last_synced_at")
    # The worker role may read the status too (what an operator's tooling would use).
    with AuthClient(make_config(service.target, garmin, tmp_path, users=("ann",)).auth) as client:
        assert client.get_status("ann").synced_through == after.synced_through.ToDatetime(
            tzinfo=UTC
        )


def test_an_expired_refreshable_session_is_refreshed_and_persisted(
    service: Replica, garmin: GarminEmulator, tmp_path: Path, database_url: str, keyring: Keyring
) -> None:
    """The service refreshes centrally at lease time; the new tokens are stored encrypted."""
    email = email_of("bea")
    garmin.add_user(email, PASSWORD)
    garmin.add_activities(email, 2)
    login = GarthUpstream(upstream(garmin)).login(email, PASSWORD)
    assert isinstance(login, LoginSucceeded)
    expired_oauth2 = dataclasses.replace(
        login.tokens.oauth2, expires_at=datetime.now(UTC) - timedelta(minutes=5)
    )
    imported = dataclasses.replace(login.tokens, oauth2=expired_oauth2)
    service.call(
        "ImportSession",
        pb.ImportSessionRequest(user_id="bea", session=tokens_to_proto(imported)),
    )
    garmin.reset_records()

    result = run_worker(make_config(service.target, garmin, tmp_path, users=("bea",)))

    assert result.outcome("bea") == "SYNCED"
    assert result.users["bea"]["items"] == 2
    stored = stored_tokens(database_url, keyring, "bea")
    assert stored is not None
    assert stored.oauth2.access_token != imported.oauth2.access_token
    assert stored.oauth2.expires_at > datetime.now(UTC) + timedelta(minutes=30)
    assert stored.oauth1_token().oauth_token == imported.oauth1_token().oauth_token
    # One exchange, by the service at lease time; the worker had no need to refresh.
    assert garmin.exchange_count(email) == 1
    assert result.users["bea"]["refreshed"] is False
    # The persisted tokens are the ones Garmin accepts now.
    with ConnectApi(upstream(garmin), stored.domain) as api:
        assert api.get_json(PROFILE_PATH, stored.oauth2.access_token)["userName"] == email


def test_a_token_expiring_mid_run_is_refreshed_once_through_refresh_lease(
    service: Replica, garmin: GarminEmulator, tmp_path: Path, database_url: str, keyring: Keyring
) -> None:
    email = connect(service, garmin, "cai", activities=6)
    before = stored_tokens(database_url, keyring, "cai")
    assert before is not None
    version_before = status(service, "cai").session_version
    config = make_config(service.target, garmin, tmp_path, users=("cai",), page_size=2)
    # After the first write, Garmin considers the access token expired (the service does not).
    result, calls = run_expiring_mid_run(config, garmin, tmp_path, email)

    assert result.outcome("cai") == "SYNCED"
    assert result.users["cai"]["items"] == 6
    assert result.users["cai"]["refreshed"] is True
    assert calls == ["RefreshLease", "ReleaseLease"]
    # The login's exchange and one more, by the service: the worker holds no OAuth1 token.
    assert garmin.exchange_count(email) == 2
    after = stored_tokens(database_url, keyring, "cai")
    assert after is not None
    assert after.oauth2.access_token != before.oauth2.access_token
    assert after.oauth1 == before.oauth1
    assert status(service, "cai").session_version == version_before + 1
    with ConnectApi(upstream(garmin), after.domain) as api:
        assert api.get_json(PROFILE_PATH, after.oauth2.access_token)["userName"] == email


def test_a_session_revoked_at_garmin_ends_auth_expired_and_is_wiped(
    service: Replica, garmin: GarminEmulator, tmp_path: Path, database_url: str
) -> None:
    revoked = run_revoked_mid_run(service, garmin, tmp_path, "dan")
    result = revoked.run

    assert result.exit_code == 0
    assert result.outcome("dan") == "AUTH_EXPIRED"
    # The API's 401 makes the worker ask for a fresh token; the service's exchange is refused,
    # so the service ends the session itself and the worker has nothing left to report.
    assert revoked.calls == ["RefreshLease"]
    assert stored_row(database_url, "dan").session_ciphertext is None
    after = status(service, "dan")
    assert after.state == pb.SESSION_STATE_AUTH_EXPIRED
    assert "401" in after.invalidated_reason
    assert not after.HasField("lease")
    assert not after.HasField("synced_through")
    # The item written before the rejection stays; nothing was written after it.
    assert len(summaries(tmp_path, "dan")) == 1


def test_a_second_run_fetches_only_what_is_new(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    email = connect(service, garmin, "eve", activities=5)
    config = make_config(service.target, garmin, tmp_path, users=("eve",), with_files=True)

    first = run_worker(config)
    assert first.outcome("eve") == "SYNCED"
    assert first.users["eve"]["items"] == 5
    assert garmin.request_count(DOWNLOAD_PREFIX) == 5
    synced_through = status(service, "eve").synced_through.ToDatetime(tzinfo=UTC)

    garmin.reset_records()
    new = garmin.add_activities(
        email, 2, first_start=datetime.now(UTC) - timedelta(minutes=30), every=timedelta(minutes=5)
    )
    second = run_worker(config)

    assert second.outcome("eve") == "SYNCED"
    assert second.users["eve"]["items"] == 2
    # Only the new activities' files were downloaded; the listing was one page.
    assert garmin.request_count(DOWNLOAD_PREFIX) == 2
    assert {call.path for call in garmin.api_calls if call.path.startswith(DOWNLOAD_PREFIX)} == {
        f"{DOWNLOAD_PREFIX}{activity['activityId']}" for activity in new
    }
    [listing] = [call for call in garmin.api_calls if call.path == ACTIVITIES_PATH]
    window_start = parse_qs(listing.query)["startDate"][0]
    # synced_through minus the overlap (1 day) minus a day for local dates.
    assert window_start == (synced_through - timedelta(days=2)).date().isoformat()
    assert status(service, "eve").synced_through.ToDatetime(tzinfo=UTC) == utc(
        new[-1]["startTimeGMT"]
    )
    assert len(activity_files(tmp_path, "eve")) == 14  # 7 summaries + 7 originals

    third = run_worker(config)
    assert third.outcome("eve") == "NOTHING_NEW"
    assert third.users["eve"]["items"] == 0


def test_all_releases_each_user_with_the_next_lease_next_session(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    """--all ends each synced user's lease inside the LeaseNextSession that takes the next
    user (one call instead of two); a thread's last user only is released on its own (or
    rides on the call that finds nothing due)."""
    users = [f"user-{index:02d}" for index in range(12)]
    for user in users:
        connect(service, garmin, user, activities=2)
    config = make_config(service.target, garmin, tmp_path, all_users=True, concurrency=2)
    result, calls = run_recorded(config)

    assert result.exit_code == 0
    assert result.summary["summary"]["SYNCED"] == 12
    carried = calls.count("LeaseNextSession+release")
    alone = calls.count("ReleaseLease")
    assert carried + alone == 12  # each user released once, one way or the other
    assert alone <= 2  # at most each thread's last user (of 2 threads)
    for user in users:
        after = status(service, user)
        assert not after.HasField("lease")
        assert after.HasField("synced_through")
        assert after.last_synced_at == after.last_sync_attempt_at


def test_all_drains_50_users_with_concurrency_8(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    users = [f"user-{index:02d}" for index in range(50)]
    for user in users:
        connect(service, garmin, user, activities=2)
    garmin.latency_seconds = 0.01
    sink = RecordingSink(DirectorySink(tmp_path))

    result = run_worker(
        make_config(service.target, garmin, tmp_path, all_users=True, concurrency=8), sink=sink
    )

    assert result.exit_code == 0
    assert result.summary["users"] == 50
    assert result.summary["summary"]["SYNCED"] == 50
    assert sorted(result.users) == users
    assert 1 < sink.max_in_flight <= 8
    for user in users:
        assert len(summaries(tmp_path, user)) == 2
    assert all(not status(service, user).HasField("lease") for user in users[:5])


def test_a_first_sync_that_finds_nothing_counts_as_a_sync(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    """Before: no synced_through was reported, so the release counted a failed attempt: the
    user never showed as synced and stayed first in LeaseNextSession's line."""
    connect(service, garmin, "nia")
    config = make_config(service.target, garmin, tmp_path, users=("nia",))
    started = datetime.now(UTC)

    first = run_worker(config)

    assert first.outcome("nia") == "NOTHING_NEW"
    after = status(service, "nia")
    assert after.HasField("last_synced_at")
    synced_through = after.synced_through.ToDatetime(tzinfo=UTC)
    backfill = config.sync.backfill
    assert (
        started - backfill - timedelta(minutes=1)
        < synced_through
        <= started - backfill + (timedelta(minutes=1))
    )
    # The next run reads the same window again: an activity uploaded late is not missed.
    garmin.reset_records()
    late = garmin.add_activities(
        email_of("nia"), 1, first_start=datetime.now(UTC) - timedelta(days=3)
    )
    second = run_worker(config)
    assert second.outcome("nia") == "SYNCED"
    [listing] = [call for call in garmin.api_calls if call.path == ACTIVITIES_PATH]
    assert parse_qs(listing.query)["startDate"][0] == (
        (synced_through - timedelta(days=2)).date().isoformat()
    )
    assert status(service, "nia").synced_through.ToDatetime(tzinfo=UTC) == utc(
        late[0]["startTimeGMT"]
    )


def test_a_refused_fresh_token_is_reported_with_its_version_and_ends_the_session(
    service: Replica, garmin: GarminEmulator, tmp_path: Path, database_url: str
) -> None:
    """Garmin's API refuses the grant's token and the fresh one RefreshLease answers while the
    service's own refresh works: the worker reports the session invalid, naming the version
    of the token refused (the service's, so the report stands)."""
    connect(service, garmin, "eli", activities=2)
    before = status(service, "eli").session_version
    garmin.fail_next(ACTIVITIES_PATH, 401, count=2)
    config = make_config(service.target, garmin, tmp_path, users=("eli",))

    result, calls = run_recorded(config)

    assert result.outcome("eli") == "AUTH_EXPIRED"
    assert calls == ["RefreshLease", "ReportInvalidated"]
    after = status(service, "eli")
    assert after.state == pb.SESSION_STATE_AUTH_EXPIRED
    assert after.session_version == before + 2  # the refresh, then the report
    assert stored_row(database_url, "eli").session_ciphertext is None


class _RefreshedBeforeTheReport(RecordingClient):
    """Another request of the holder's refreshed the session just before this report."""

    def report_invalidated(
        self, lease_id: str, reason: str, session_version: int = 0
    ) -> SessionStatus:
        self.refresh_lease(lease_id, session_version)
        return super().report_invalidated(lease_id, reason, session_version)


def test_a_report_the_service_refuses_as_stale_keeps_the_session_and_releases_the_lease(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    """The refusal of a token the service has replaced says nothing of the session: it stays
    ACTIVE, and the worker gives its lease back instead of holding it to its ttl (found by
    review)."""
    connect(service, garmin, "fia", activities=2)
    garmin.fail_next(ACTIVITIES_PATH, 401, count=2)
    config = make_config(service.target, garmin, tmp_path, users=("fia",))
    client = _RefreshedBeforeTheReport(config.auth)
    client.calls = []
    try:
        result = run_worker(config, client=client)
    finally:
        client.close()

    assert result.outcome("fia") == "FAILED"
    assert client.calls[-2:] == ["ReportInvalidated", "ReleaseLease"]
    after = status(service, "fia")
    assert after.state == pb.SESSION_STATE_ACTIVE
    assert not after.HasField("lease")


class _ReportFails(RecordingClient):
    """ReportInvalidated answers INTERNAL (a service bug): neither fatal nor LEASE_LOST."""

    def report_invalidated(
        self, lease_id: str, reason: str, session_version: int = 0
    ) -> SessionStatus:
        self.calls.append("ReportInvalidated")
        raise AuthServiceError(grpc.StatusCode.INTERNAL, "", "internal error")


@pytest.mark.parametrize("all_users", [False, True], ids=["user", "all"])
def test_a_failed_report_still_gives_the_lease_back(
    service: Replica, garmin: GarminEmulator, tmp_path: Path, all_users: bool
) -> None:
    """run() "always ends the lease's story". Before: a ReportInvalidated failing in a way
    that is neither fatal nor LEASE_LOST (INTERNAL) ended the sync without a release, though
    the report had not ended the lease: the user stayed locked for the whole ttl (review)."""
    connect(service, garmin, "ria", activities=2)
    garmin.fail_next(ACTIVITIES_PATH, 401, count=2)
    users = () if all_users else ("ria",)
    config = make_config(service.target, garmin, tmp_path, users=users, all_users=all_users)
    client = _ReportFails(config.auth)
    client.calls = []
    try:
        result = run_worker(config, client=client)
    finally:
        client.close()

    assert result.outcome("ria") == "FAILED"
    released = "LeaseNextSession+release" if all_users else "ReleaseLease"
    assert client.calls[-2:] == ["ReportInvalidated", released]
    after = status(service, "ria")
    assert after.state == pb.SESSION_STATE_ACTIVE
    assert not after.HasField("lease")


def test_an_original_file_past_the_answer_cap_is_skipped_and_the_sync_goes_on(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    """A download past the Connect API client's cap is not read (FileTooLarge): the sync keeps
    the activity's summary and goes on, as for an activity without an original file, rather
    than failing the user on every run."""
    connect(service, garmin, "gus", activities=2)
    garmin.fail_next(DOWNLOAD_PREFIX, 200, body=b"P" * (MAX_ANSWER_BYTES + 1))
    config = make_config(service.target, garmin, tmp_path, users=("gus",), with_files=True)

    result = run_worker(config)

    assert result.outcome("gus") == "SYNCED"
    assert len(summaries(tmp_path, "gus")) == 2
    assert len(activity_files(tmp_path, "gus")) == 3  # 2 summaries + 1 original
