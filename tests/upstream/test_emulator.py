"""The emulator itself, spoken to directly over HTTP (no garth): the protocol checks the
adapter tests rely on."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import pytest
import requests
from oauthlib.oauth1 import Client as OAuth1Client

from auth_service.domain.errors import GarminCredentialsRejected
from auth_service.domain.models import LoginSucceeded
from auth_service.upstream.garth.provider import GarthUpstream
from garmin_client.connect_api import ConnectApi
from garmin_client.settings import UpstreamSettings
from garmin_emulator import (
    ACTIVITIES_PATH,
    DOWNLOAD_PREFIX,
    EXCHANGE_PATH,
    LOGIN_PATH,
    PREAUTHORIZED_PATH,
    PROFILE_PATH,
    REQUEST_COUNTS_PATH,
    SIGN_IN_PATH,
    EmulatedUser,
    GarminEmulator,
)
from tests.fixtures.emulators import scanned_emulator

from .conftest import CONSUMER_KEY, CONSUMER_SECRET

pytestmark = pytest.mark.timeout(30)

SERVICE = "https://mobile.integration.garmin.com/gcm/android"
TIMEOUT = 5
CONNECTAPI = "connectapi.garmin.com"


def sso_ticket(emulator: GarminEmulator, user: EmulatedUser) -> str:
    """The SSO dance by hand: sign-in cookie, then the login JSON."""
    http = requests.Session()
    http.get(
        f"{emulator.url}{SIGN_IN_PATH}", params={"clientId": "GCM_ANDROID_DARK"}, timeout=TIMEOUT
    )
    answer = http.post(
        f"{emulator.url}{LOGIN_PATH}",
        params={"clientId": "GCM_ANDROID_DARK", "locale": "en-US", "service": SERVICE},
        json={"username": user.email, "password": user.password},
        timeout=TIMEOUT,
    )
    assert answer.status_code == 200, answer.text
    ticket: str = answer.json()["serviceTicketId"]
    return ticket


def preauthorized_query(ticket: str) -> str:
    return f"ticket={ticket}&login-url={SERVICE}&accepts-mfa-tokens=true"


def signed_get(
    emulator: GarminEmulator, path_and_query: str, client: OAuth1Client
) -> requests.Response:
    """Sign the original https URL, send it to the emulator with X-Forwarded-Host."""
    _, headers, _ = client.sign(f"https://{CONNECTAPI}{path_and_query}", "GET")
    return requests.get(
        f"{emulator.url}{path_and_query}",
        headers={**headers, "X-Forwarded-Host": CONNECTAPI},
        timeout=TIMEOUT,
    )


def signed_post(
    emulator: GarminEmulator, path: str, client: OAuth1Client, form: dict[str, str]
) -> requests.Response:
    body = urlencode(form)
    content_type = {"Content-Type": "application/x-www-form-urlencoded"}
    _, headers, _ = client.sign(f"https://{CONNECTAPI}{path}", "POST", body, content_type)
    return requests.post(
        f"{emulator.url}{path}",
        data=body,
        headers={**headers, **content_type, "X-Forwarded-Host": CONNECTAPI},
        timeout=TIMEOUT,
    )


def oauth1_grant(emulator: GarminEmulator, user: EmulatedUser) -> dict[str, str]:
    answer = signed_get(
        emulator,
        f"{PREAUTHORIZED_PATH}?{preauthorized_query(sso_ticket(emulator, user))}",
        OAuth1Client(CONSUMER_KEY, client_secret=CONSUMER_SECRET),
    )
    assert answer.status_code == 200, answer.text
    return dict(parse_qsl(answer.text))


def test_preauthorized_accepts_a_good_signature_once(
    emulator: GarminEmulator, user: EmulatedUser
) -> None:
    path = f"{PREAUTHORIZED_PATH}?{preauthorized_query(sso_ticket(emulator, user))}"
    good = OAuth1Client(CONSUMER_KEY, client_secret=CONSUMER_SECRET)

    first = signed_get(emulator, path, good)
    replay = signed_get(emulator, path, good)

    assert first.status_code == 200
    assert set(dict(parse_qsl(first.text))) == {"oauth_token", "oauth_token_secret"}
    assert replay.status_code == 401  # tickets are single-use


@pytest.mark.parametrize(
    ("key", "secret", "message"),
    [
        (CONSUMER_KEY, "wrong-consumer-secret", "Signature is invalid"),
        ("someone-elses-key", CONSUMER_SECRET, "ConsumerKey is invalid"),
    ],
)
def test_preauthorized_refuses_a_bad_signature_or_consumer(
    emulator: GarminEmulator, user: EmulatedUser, key: str, secret: str, message: str
) -> None:
    path = f"{PREAUTHORIZED_PATH}?{preauthorized_query(sso_ticket(emulator, user))}"

    answer = signed_get(emulator, path, OAuth1Client(key, client_secret=secret))

    # Garmin's API server answers its HTML status page naming the cause.
    assert answer.status_code == 401
    assert answer.headers["Content-Type"].startswith("text/html")
    assert f"<b>Message</b> {message}" in answer.text
    assert emulator.signature_failures == 1


@pytest.mark.parametrize("skew", [-3600.0, 3600.0])
def test_a_timestamp_far_from_garmins_clock_is_refused(
    emulator: GarminEmulator, user: EmulatedUser, skew: float
) -> None:
    good = OAuth1Client(CONSUMER_KEY, client_secret=CONSUMER_SECRET)
    emulator.oauth_clock_skew_seconds = skew
    late = signed_get(
        emulator, f"{PREAUTHORIZED_PATH}?{preauthorized_query(sso_ticket(emulator, user))}", good
    )
    emulator.oauth_clock_skew_seconds = 0.0
    timely = signed_get(
        emulator, f"{PREAUTHORIZED_PATH}?{preauthorized_query(sso_ticket(emulator, user))}", good
    )

    assert late.status_code == 401
    assert "<b>Message</b> Timestamp is invalid" in late.text
    assert timely.status_code == 200


def test_signature_covers_the_query(emulator: GarminEmulator, user: EmulatedUser) -> None:
    good = OAuth1Client(CONSUMER_KEY, client_secret=CONSUMER_SECRET)
    ticket = sso_ticket(emulator, user)
    signed_for = f"https://{CONNECTAPI}{PREAUTHORIZED_PATH}?{preauthorized_query('ST-other')}"
    _, headers, _ = good.sign(signed_for, "GET")

    answer = requests.get(
        f"{emulator.url}{PREAUTHORIZED_PATH}?{preauthorized_query(ticket)}",
        headers={**headers, "X-Forwarded-Host": CONNECTAPI},
        timeout=TIMEOUT,
    )

    assert answer.status_code == 401


def test_exchange_verifies_the_token_secret_and_revocation(
    emulator: GarminEmulator, user: EmulatedUser
) -> None:
    grant = oauth1_grant(emulator, user)

    def client(token_secret: str) -> OAuth1Client:
        return OAuth1Client(
            CONSUMER_KEY,
            client_secret=CONSUMER_SECRET,
            resource_owner_key=grant["oauth_token"],
            resource_owner_secret=token_secret,
        )

    wrong = signed_post(emulator, EXCHANGE_PATH, client("not-the-secret"), {})
    good = signed_post(emulator, EXCHANGE_PATH, client(grant["oauth_token_secret"]), {})
    emulator.revoke_tokens(user.email)
    revoked = signed_post(emulator, EXCHANGE_PATH, client(grant["oauth_token_secret"]), {})

    assert wrong.status_code == 401
    assert good.status_code == 200
    assert {"access_token", "refresh_token", "expires_in", "refresh_token_expires_in"} <= set(
        good.json()
    )
    assert revoked.status_code == 401
    assert "<b>Message</b> Signature is invalid" in wrong.text
    assert "<b>Message</b> OAuthToken is invalid" in revoked.text
    assert emulator.exchange_count(user.email) == 1


def test_bearer_api_activities_newest_first_with_paging_and_dates(
    emulator: GarminEmulator, user: EmulatedUser
) -> None:
    created = emulator.add_activities(user.email, 5)
    grant = oauth1_grant(emulator, user)
    exchange = signed_post(
        emulator,
        EXCHANGE_PATH,
        OAuth1Client(
            CONSUMER_KEY,
            client_secret=CONSUMER_SECRET,
            resource_owner_key=grant["oauth_token"],
            resource_owner_secret=grant["oauth_token_secret"],
        ),
        {},
    )
    bearer = {"Authorization": f"Bearer {exchange.json()['access_token']}"}

    page = requests.get(
        f"{emulator.url}{ACTIVITIES_PATH}",
        params={"start": 1, "limit": 2},
        headers=bearer,
        timeout=TIMEOUT,
    ).json()
    newest_day = created[-1]["startTimeLocal"][:10]
    same_day = requests.get(
        f"{emulator.url}{ACTIVITIES_PATH}",
        params={"startDate": newest_day, "endDate": newest_day},
        headers=bearer,
        timeout=TIMEOUT,
    ).json()
    anonymous = requests.get(f"{emulator.url}{ACTIVITIES_PATH}", timeout=TIMEOUT)
    bad_param = requests.get(
        f"{emulator.url}{ACTIVITIES_PATH}", params={"limit": "x"}, headers=bearer, timeout=TIMEOUT
    )

    assert [a["activityId"] for a in page] == [created[3]["activityId"], created[2]["activityId"]]
    assert [a["activityId"] for a in same_day] == [created[-1]["activityId"]]
    assert anonymous.status_code == 401
    assert bad_param.status_code == 400
    activity_id = created[0]["activityId"]
    download = requests.get(
        f"{emulator.url}{DOWNLOAD_PREFIX}{activity_id}", headers=bearer, timeout=TIMEOUT
    )
    assert download.status_code == 200
    assert zipfile.ZipFile(io.BytesIO(download.content)).namelist() == [
        f"{activity_id}_ACTIVITY.fit"
    ]
    assert emulator.api_calls[0].token_owner == user.email
    profile = requests.get(f"{emulator.url}{PROFILE_PATH}", headers=bearer, timeout=TIMEOUT).json()
    assert profile["userName"] == user.email


def test_malformed_requests_get_json_errors_and_the_server_survives(
    emulator: GarminEmulator,
) -> None:
    host, port = emulator.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(b"NONSENSE\r\n\r\n")
        reply = b"".join(iter(lambda: raw.recv(65536), b"")).decode()
    bad_json = requests.post(
        f"{emulator.url}{LOGIN_PATH}", data=b"{not json", params={"clientId": "x"}, timeout=TIMEOUT
    )
    unknown = requests.get(f"{emulator.url}/no/such/endpoint", timeout=TIMEOUT)
    wrong_method = requests.delete(f"{emulator.url}{PROFILE_PATH}", timeout=TIMEOUT)

    assert reply.startswith("HTTP/1.1 400")
    assert json.loads(reply.split("\r\n\r\n", 1)[1])["error"] == "Bad Request"
    assert bad_json.status_code == 400
    assert "message" in bad_json.json()
    assert unknown.status_code == 404
    assert unknown.json()["message"] == "no such endpoint"
    assert wrong_method.status_code == 405
    assert requests.get(f"{emulator.url}{SIGN_IN_PATH}", timeout=TIMEOUT).status_code == 200


def test_faults_play_in_order_then_stop(emulator: GarminEmulator) -> None:
    emulator.fail_next(SIGN_IN_PATH, 429, retry_after=7)
    emulator.fail_next(SIGN_IN_PATH, 503, body="<html>down</html>")

    first = requests.get(f"{emulator.url}{SIGN_IN_PATH}", timeout=TIMEOUT)
    second = requests.get(f"{emulator.url}{SIGN_IN_PATH}", timeout=TIMEOUT)
    third = requests.get(f"{emulator.url}{SIGN_IN_PATH}", timeout=TIMEOUT)

    assert (first.status_code, first.headers["Retry-After"]) == (429, "7")
    assert second.status_code == 503
    assert second.headers["Content-Type"].startswith("text/html")
    assert third.status_code == 200
    assert emulator.request_count(SIGN_IN_PATH) == 3


def test_reset_fault_resets_the_connection(emulator: GarminEmulator) -> None:
    emulator.fail_next(SIGN_IN_PATH, "reset")

    with pytest.raises(requests.ConnectionError):
        requests.get(f"{emulator.url}{SIGN_IN_PATH}", timeout=TIMEOUT)


def test_runs_as_a_module_and_prints_its_url() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "garmin_emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        assert requests.get(f"{url}{SIGN_IN_PATH}", timeout=5).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_cli_adds_latency_and_users_from_a_file_and_reports_request_counts(
    tmp_path: Path,
) -> None:
    users = tmp_path / "users.txt"
    users.write_text(
        "# benchmark accounts\nfirst@example.com:pw-1\n\nsecond@example.com:pw-2\n",
        encoding="utf-8",
    )
    latency = 0.05
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "garmin_emulator",
            "--port",
            "0",
            "--consumer-key",
            CONSUMER_KEY,
            "--consumer-secret",
            CONSUMER_SECRET,
            "--users-from-file",
            str(users),
            "--activities",
            "3",
            "--latency",
            str(latency),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        settings = UpstreamSettings(CONSUMER_KEY, CONSUMER_SECRET, base_url=url)
        login = GarthUpstream(settings).login("second@example.com", "pw-2")
        assert isinstance(login, LoginSucceeded)
        before = requests.get(f"{url}{REQUEST_COUNTS_PATH}", timeout=TIMEOUT).json()

        started = time.perf_counter()
        with ConnectApi(settings, login.tokens.domain) as api:
            token = login.tokens.oauth2.access_token
            listed = api.get_json(ACTIVITIES_PATH, token, {"start": 0, "limit": 100})
        elapsed = time.perf_counter() - started
        after = requests.get(f"{url}{REQUEST_COUNTS_PATH}", timeout=TIMEOUT).json()

        assert len(listed) == 3
        assert elapsed >= latency
        assert before[LOGIN_PATH] == 1
        assert after == {**before, ACTIVITIES_PATH: 1}  # the counts endpoint counts nothing
        # Every account of the file exists (the comment and the blank line were skipped, or
        # the emulator would have refused to start); a wrong password is still refused.
        assert isinstance(
            GarthUpstream(settings).login("first@example.com", "pw-1"), LoginSucceeded
        )
        with pytest.raises(GarminCredentialsRejected):
            GarthUpstream(settings).login("first@example.com", "pw-2")
    finally:
        process.terminate()
        process.wait(timeout=10)


def _exchange(raw: socket.socket, request: bytes) -> bytes:
    """Send one request on a kept connection and read exactly its reply (by Content-Length)."""
    raw.sendall(request)
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = raw.recv(65536)
        assert chunk, "the emulator closed the connection"
        reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += raw.recv(65536)
    return head


def test_connections_are_kept_alive_like_garmins(emulator: GarminEmulator) -> None:
    """Garmin speaks HTTP/1.1 and keeps the connection: two requests, one connection."""
    host, port = emulator.url.removeprefix("http://").split(":")
    request = f"GET {SIGN_IN_PATH}?clientId=x HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        first = _exchange(raw, request)
        second = _exchange(raw, request)

    assert first.startswith(b"HTTP/1.1 200")
    assert second.startswith(b"HTTP/1.1 200")


def test_a_stopped_emulator_closes_kept_connections() -> None:
    """A connection kept from before the stop ends: nothing answers on it afterwards."""
    emulator = scanned_emulator(consumer_key=CONSUMER_KEY, consumer_secret=CONSUMER_SECRET).start()
    host, port = emulator.url.removeprefix("http://").split(":")
    request = f"GET {SIGN_IN_PATH}?clientId=x HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        assert _exchange(raw, request).startswith(b"HTTP/1.1 200")
        emulator.stop()
        try:
            raw.sendall(request)
            after = raw.recv(65536)
        except OSError:
            after = b""

    assert after == b""
