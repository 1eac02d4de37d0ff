"""README, Garmin sign-in today: "Every import format is checked before anything is stored
(INVALID_ARGUMENT otherwise): ... a DI pair's access token is a JWT issued to the client id
given with it ..., whose `scope` claim, if any, is a text or a list of texts, ...".
Before, only garminconnect_tokens applied the scope rule; the `session` source
(api.convert._di_pair_violations) stored a DI pair whose JWT's scope claim is a number ACTIVE.
Found by a read-only review."""

from __future__ import annotations

import base64
import json
import time

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import KNOWN_DI_CLIENT_IDS
from tests.fixtures.servers import Replica, expect_failure

CLIENT_ID = KNOWN_DI_CLIENT_IDS[0]


def _part(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def _jwt(claims: dict[str, object]) -> str:
    return f"{_part({'alg': 'RS256'})}.{_part(claims)}.c2lnbmF0dXJl"


@pytest.mark.timeout(60)
def test_session_import_refuses_a_jwt_whose_scope_claim_is_not_text(service: Replica) -> None:
    expires = int(time.time()) + 3600
    access = _jwt({"client_id": CLIENT_ID, "exp": expires, "scope": 12345})
    session = pb.GarminSession(
        oauth2=pb.OAuth2Token(
            scope="CONNECT_READ",
            jti="jti-1",
            token_type="bearer",
            access_token=access,
            refresh_token="refresh-token-abcdef",
            expires_at=Timestamp(seconds=expires),
        ),
        di_client_id=CLIENT_ID,
        kind=pb.SESSION_KIND_DI_OAUTH2,
    )
    request = pb.ImportSessionRequest(user_id="scoped", session=session)
    try:
        answer = service.call("ImportSession", request)
        outcome = f"OK, stored {pb.SessionState.Name(answer.status.state)}"
    except grpc.RpcError:
        failure = expect_failure(lambda: service.call("ImportSession", request))
        outcome = failure.code.name
    assert outcome == "INVALID_ARGUMENT", (
        f"a `session` whose JWT scope claim is a number answered {outcome}; README says every "
        "import format refuses a scope claim that is neither text nor a list of texts"
    )
