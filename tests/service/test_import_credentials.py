"""ImportSession stores only what later requests can use: every credential is visible ASCII
(a header carries it) in all three import formats, and a DI pair's access token was issued to
the client id it names. Before, a "€" or a newline in a token was stored ACTIVE and failed
every later use (GetStatus(validate) answered INTERNAL), and a pair naming another client id
died at its first refresh (invalid_grant: the session ended AUTH_EXPIRED). The token type
opens the same Authorization header, so it is held to visible ASCII too (1-32 characters), in
ReportRefreshed's session as well; and a garminconnect JWT whose scope is no text is refused
rather than answered INTERNAL."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import DI_TOKEN_PATH, KNOWN_DI_CLIENT_IDS, GarminEmulator
from tests.fixtures.servers import Replica, expect_failure
from tests.service.test_login import PASSWORD, login, stored_row

pytestmark = pytest.mark.timeout(60)


def _di_session(access_token: str, refresh_token: str, client_id: str) -> pb.GarminSession:
    return pb.GarminSession(
        oauth2=pb.OAuth2Token(
            scope="CONNECT_READ",
            jti="jti-1",
            token_type="bearer",
            access_token=access_token,
            refresh_token=refresh_token,
            expires_at=Timestamp(seconds=int(time.time()) + 3600),
        ),
        di_client_id=client_id,
        kind=pb.SESSION_KIND_DI_OAUTH2,
    )


def _import(replica: Replica, user_id: str, **source: Any) -> pb.SessionStatus:
    request = pb.ImportSessionRequest(user_id=user_id, **source)
    return replica.call("ImportSession", request).status  # type: ignore[no-any-return]


# --- credentials no HTTP request can carry ---------------------------------------------------


def test_a_session_whose_token_no_header_can_carry_is_refused(
    service: Replica, garmin: GarminEmulator, database_url: str
) -> None:
    """Before: stored ACTIVE (isprintable() was the only check), and GetStatus(validate) then
    crashed in http.client (UnicodeEncodeError) and answered INTERNAL."""
    garmin.add_user("uni@example.com", PASSWORD)
    answer = garmin.issue_di_tokens("uni@example.com")
    session = _di_session(
        answer["access_token"] + "\u20ac", answer["refresh_token"], KNOWN_DI_CLIENT_IDS[0]
    )

    failure = expect_failure(lambda: _import(service, "uni", session=session))

    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert stored_row(database_url, "uni") is None


def test_garminconnect_import_refuses_a_token_no_http_header_can_carry(
    service: Replica, garmin: GarminEmulator, database_url: str
) -> None:
    """python-garminconnect's file: di_token is checked with isprintable() and "no
    whitespace" only, so a non-Latin-1 character passes; when Garmin is busy at the import
    the pair is stored unchecked and every later use of the access token crashes."""
    garmin.add_user("gcu@example.com", PASSWORD)
    file = garmin.garminconnect_tokens("gcu@example.com")
    file["di_token"] += "\u20ac"
    garmin.fail_next(DI_TOKEN_PATH, 503)  # Garmin busy: the pair is stored as it is
    failure = expect_failure(lambda: _import(service, "gcu", garminconnect_tokens=json.dumps(file)))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert stored_row(database_url, "gcu") is None


def _garth_dumps(access_token: str) -> str:
    now = int(time.time())
    pair = [
        {"oauth_token": "oauth1-token-abc", "oauth_token_secret": "oauth1-secret-abc"},
        {
            "scope": "CONNECT_READ",
            "jti": "jti-1",
            "token_type": "Bearer",
            "access_token": access_token,
            "refresh_token": "refresh-abc",
            "expires_in": 3600,
            "expires_at": now + 3600,
            "refresh_token_expires_in": 7200,
            "refresh_token_expires_at": now + 7200,
        },
    ]
    return base64.b64encode(json.dumps(pair).encode()).decode()


@pytest.mark.parametrize(
    "access_token",
    ["line-one\nline-two", "x" * 9000],
    ids=["newline", "9000-characters"],
)
def test_garth_token_import_applies_the_same_token_limits_as_a_session(
    service: Replica, database_url: str, access_token: str
) -> None:
    """The `session` source refuses tokens over 8192 characters or with non-printable ones
    (api/convert.py _required_text); the `garth_token` source stores them ACTIVE unchecked.
    The stored newline token makes GetStatus(validate) answer GARMIN_UNAVAILABLE "Garmin
    answered something unreadable" although Garmin was never asked."""
    failure = expect_failure(
        lambda: _import(service, "gar", garth_token=_garth_dumps(access_token))
    )
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert stored_row(database_url, "gar") is None


# --- a DI pair naming another client id ------------------------------------------------------


def test_session_import_refuses_a_di_pair_issued_to_another_client_id(
    service: Replica, garmin: GarminEmulator, database_url: str
) -> None:
    """garminconnect_tokens refuses a JWT issued to another client id than the file names;
    the `session` source stored such a pair ACTIVE, and since refresh tokens are bound to
    their client id (facts file), its first refresh got invalid_grant and ended it."""
    garmin.add_user("cid@example.com", PASSWORD)
    answer = garmin.issue_di_tokens("cid@example.com", client_id=KNOWN_DI_CLIENT_IDS[0])
    session = _di_session(answer["access_token"], answer["refresh_token"], KNOWN_DI_CLIENT_IDS[1])

    failure = expect_failure(lambda: _import(service, "cid", session=session))

    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert stored_row(database_url, "cid") is None


# --- a token type no Authorization header can carry ------------------------------------------

# The Authorization header is "<token type> <access token>": each value here makes every later
# use of the session fail (requests refuses the header) without Garmin being asked.
UNUSABLE_TOKEN_TYPES = {
    "crlf": "Bearer\r\nX-Injected: 1",
    "euro": "Bearer\u20ac",
    "space": "Bear er",
    "33-characters": "B" * 33,
}


def _garth_dumps_with(token_type: object) -> str:
    pair = json.loads(base64.b64decode(_garth_dumps("access-token-abcdef")))
    pair[1]["token_type"] = token_type
    return base64.b64encode(json.dumps(pair).encode()).decode()


@pytest.mark.parametrize(
    "token_type", [*UNUSABLE_TOKEN_TYPES.values(), "", 7], ids=[*UNUSABLE_TOKEN_TYPES, "empty", "7"]
)
def test_garth_token_import_refuses_a_token_type_no_header_can_carry(
    service: Replica, database_url: str, token_type: object
) -> None:
    """Before: garth/dumps.py checked the tokens but not token_type; the session was stored
    ACTIVE and GetStatus(validate) then answered GARMIN_UNAVAILABLE "Garmin answered
    something unreadable" without asking Garmin."""
    failure = expect_failure(
        lambda: _import(service, "gtt", garth_token=_garth_dumps_with(token_type))
    )
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, failure
    assert failure.field_violations == ["garth_token"]
    assert stored_row(database_url, "gtt") is None


def test_garth_token_import_keeps_garmins_token_type(service: Replica) -> None:
    status = _import(service, "gtb", garth_token=_garth_dumps_with("Bearer"))
    assert status.state == pb.SESSION_STATE_ACTIVE


@pytest.mark.parametrize("token_type", UNUSABLE_TOKEN_TYPES.values(), ids=UNUSABLE_TOKEN_TYPES)
def test_session_import_refuses_a_token_type_no_header_can_carry(
    service: Replica, garmin: GarminEmulator, database_url: str, token_type: str
) -> None:
    """Before: the `session` source checked token_type with isprintable() only, so "Bearer€"
    and "Bear er" were stored ACTIVE and failed every later use."""
    garmin.add_user("stt@example.com", PASSWORD)
    answer = garmin.issue_di_tokens("stt@example.com")
    session = _di_session(answer["access_token"], answer["refresh_token"], KNOWN_DI_CLIENT_IDS[0])
    session.oauth2.token_type = token_type

    failure = expect_failure(lambda: _import(service, "stt", session=session))

    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, failure
    assert failure.field_violations == ["session.oauth2.token_type"]
    assert stored_row(database_url, "stt") is None


def test_report_refreshed_refuses_a_token_type_no_header_can_carry(
    service: Replica, garmin: GarminEmulator
) -> None:
    """A worker_full holder's refreshed session goes through the same conversion: before, a
    "Bearer€" replaced the good session and its next use failed."""
    garmin.add_user("rtt@example.com", PASSWORD)
    login(service, "rtt", "rtt@example.com")
    granted = service.call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="rtt", holder="w-1"), role="worker_full"
    )
    session = pb.GarminSession()
    session.CopyFrom(granted.session)
    session.oauth2.token_type = UNUSABLE_TOKEN_TYPES["euro"]

    failure = expect_failure(
        lambda: service.call(
            "ReportRefreshed",
            pb.ReportRefreshedRequest(lease_id=granted.lease.lease_id, session=session),
            role="worker_full",
        )
    )

    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, failure
    assert failure.field_violations == ["session.oauth2.token_type"]
    status = service.call("GetStatus", pb.GetStatusRequest(user_id="rtt")).status
    assert status.session_version == granted.status.session_version


# --- python-garminconnect's file: the JWT's scope claim --------------------------------------


def _garminconnect_file_with_scope(scope: object) -> str:
    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    client_id = KNOWN_DI_CLIENT_IDS[0]
    claims = {"exp": int(time.time()) + 3600, "client_id": client_id, "scope": scope}
    jwt = f"{part({'alg': 'RS256'})}.{part(claims)}.c2lnbmF0dXJl"
    return json.dumps(
        {"di_token": jwt, "di_refresh_token": "refresh-" + "r" * 30, "di_client_id": client_id}
    )


@pytest.mark.parametrize("scope", [[1, 2], [None], [["nested"]], [{"a": 1}], 7, {"a": 1}], ids=repr)
def test_garminconnect_import_refuses_a_scope_that_is_not_text(
    service: Replica, database_url: str, scope: object
) -> None:
    """Before: a list of non-strings made `" ".join(scope)` raise TypeError, answered
    INTERNAL; anything else that was not a list was stored as its repr."""
    failure = expect_failure(
        lambda: _import(service, "gcs", garminconnect_tokens=_garminconnect_file_with_scope(scope))
    )
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, failure
    assert failure.field_violations == ["garminconnect_tokens"]
    assert "scope" in failure.message
    assert stored_row(database_url, "gcs") is None
