"""The whole authorization matrix: every RPC x every role x every kind of credential.

tests/service/test_server.py checks the role matrix with valid tokens and that one revoked
token stops working. Here every RPC meets, for each role, a valid token, no token, a
malformed header, a wrong token and a token revoked by editing the callers file while the
server runs. Requests are well-formed and aimed at a real user with a live lease, so a refused
caller that got through would change something: the test checks that nothing changed (no row,
no audit event, no call to Garmin) before letting the allowed callers in.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from auth_service.api.callers import ROLES, RPC_ROLES, VALIDATE_ROLES, token_sha256
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.fixtures.servers import ROLE_TOKENS, Replica, ServiceFactory, first_answer

from . import PASSWORD, audit_events, outcome_of, record_figures, session_proto, stored_row

pytestmark = pytest.mark.timeout(60)

# Callers whose tokens are revoked mid-test, one per role.
REVOKED_TOKENS = {role: f"{role}-revoked-token-0123456789" for role in ROLES}
BAD_CREDENTIALS = {
    "none": None,
    "malformed": "Token abc",
    "empty-bearer": "Bearer ",
    "wrong": "Bearer not-a-token-anyone-was-given-0123",
    "another-scheme": f"Basic {ROLE_TOKENS['admin']}",
}
# Who may make each call below: the role table, except that the GetStatus call asks for
# validate, which calls Garmin and may change the session (admins only; issue 14).
ALLOWED = {**RPC_ROLES, "GetStatus": VALIDATE_ROLES}
UNAUTHENTICATED = ("UNAUTHENTICATED", "CALLER_UNAUTHENTICATED")
FORBIDDEN = ("PERMISSION_DENIED", "CALLER_FORBIDDEN")


@pytest.fixture
def backend() -> str:
    return "sqlite"


def requests(lease_id: str) -> dict[str, Any]:
    """A well-formed request per RPC, aimed at the victim and the victim's live lease."""
    synced = timestamp_pb2.Timestamp()
    synced.GetCurrentTime()
    return {
        "Login": pb.LoginRequest(user_id="victim", email="victim@example.com", password=PASSWORD),
        "SubmitMfa": pb.SubmitMfaRequest(mfa_challenge_id="c" * 43, code="123456"),
        "GetStatus": pb.GetStatusRequest(user_id="victim", validate=True),
        "ImportSession": pb.ImportSessionRequest(
            user_id="victim", session=session_proto("intruder")
        ),
        "ExchangeServiceTicket": pb.ExchangeServiceTicketRequest(
            user_id="victim", service_ticket="ST-0000001-abcdefghijABCDEFGHIJ-sso"
        ),
        "DeleteSession": pb.DeleteSessionRequest(user_id="victim"),
        "ListSessions": pb.ListSessionsRequest(),
        "LeaseSession": pb.LeaseSessionRequest(user_id="victim", holder="intruder"),
        "LeaseNextSession": pb.LeaseNextSessionRequest(holder="intruder"),
        "RenewLease": pb.RenewLeaseRequest(lease_id=lease_id),
        "RefreshLease": pb.RefreshLeaseRequest(lease_id=lease_id, session_version=1),
        "ReleaseLease": pb.ReleaseLeaseRequest(lease_id=lease_id, synced_through=synced),
        "ReportRefreshed": pb.ReportRefreshedRequest(
            lease_id=lease_id, session=session_proto("intruder")
        ),
        "ReportInvalidated": pb.ReportInvalidatedRequest(lease_id=lease_id, reason="intruder"),
        "ListAuditEvents": pb.ListAuditEventsRequest(user_id="victim"),
        "WatchSessionEvents": pb.WatchSessionEventsRequest(after_cursor="0", user_id="victim"),
    }


def answer(replica: Replica, rpc: str, request: Any, authorization: str | None) -> tuple[str, str]:
    metadata = () if authorization is None else (("authorization", authorization),)
    try:
        first_answer(getattr(replica.stub, rpc)(request, metadata=metadata, timeout=10))
    except grpc.RpcError as error:
        return outcome_of(error)
    return "OK", ""


def write_callers(path: Path, *, with_revoked: bool) -> None:
    entries = [(f"{role}-caller", token, role) for role, token in ROLE_TOKENS.items()]
    if with_revoked:
        entries += [(f"revoked-{role}", token, role) for role, token in REVOKED_TOKENS.items()]
    path.write_text(
        "\n".join(
            f'[[callers]]\nname = "{name}"\ntoken_sha256 = "{token_sha256(token)}"\n'
            f'roles = ["{role}"]\n'
            for name, token, role in entries
        ),
        encoding="utf-8",
    )


def revoke(callers: Path, replica: Replica) -> None:
    """Rewrite the callers file without the revoked callers and wait for the reload (the
    server looks at the file's mtime at most every 2 s)."""
    write_callers(callers, with_revoked=False)
    later = time.time() + 5
    os.utime(callers, (later, later))
    deadline = time.monotonic() + 10
    probe = f"Bearer {REVOKED_TOKENS['admin']}"
    while answer(replica, "ListSessions", pb.ListSessionsRequest(), probe) != UNAUTHENTICATED:
        assert time.monotonic() < deadline, "the callers file was not reloaded"
        time.sleep(0.2)


def test_every_rpc_every_role_every_credential(
    service_factory: ServiceFactory, garmin: GarminEmulator, database_url: str, tmp_path: Path
) -> None:
    callers = tmp_path / "callers-matrix.toml"
    write_callers(callers, with_revoked=True)
    replica = service_factory.start(callers_file=callers)
    garmin.add_user("victim@example.com", PASSWORD)
    replica.call(
        "Login", pb.LoginRequest(user_id="victim", email="victim@example.com", password=PASSWORD)
    )
    lease_id = replica.call(
        "LeaseSession", pb.LeaseSessionRequest(user_id="victim", holder="legit"), role="worker"
    ).lease.lease_id
    # The soon-revoked tokens work until they are revoked.
    for role in ROLES:
        token = REVOKED_TOKENS[role]
        assert answer(
            replica, "GetStatus", pb.GetStatusRequest(user_id="x"), f"Bearer {token}"
        ) == (
            "OK",
            "",
        )
    revoke(callers, replica)

    before_row = stored_row(database_url, "victim")
    before_events = len(audit_events(database_url))
    before_garmin = garmin.request_count()
    calls = requests(lease_id)

    # 1. Every refusal: without valid credentials nothing is let in; with a valid token of a
    #    role the RPC does not allow, nothing either.
    refused: dict[tuple[str, str, str], tuple[str, str]] = {}
    for rpc, request in calls.items():
        for role in sorted(ROLES):
            credentials: dict[str, str | None] = {
                **BAD_CREDENTIALS,
                "revoked": f"Bearer {REVOKED_TOKENS[role]}",
            }
            for kind, authorization in credentials.items():
                refused[rpc, role, kind] = answer(replica, rpc, request, authorization)
            if role not in ALLOWED[rpc]:
                refused[rpc, role, "valid"] = answer(
                    replica, rpc, request, f"Bearer {ROLE_TOKENS[role]}"
                )
    expected = {key: FORBIDDEN if key[2] == "valid" else UNAUTHENTICATED for key in refused}
    assert refused == expected
    after_row = stored_row(database_url, "victim")
    assert after_row is not None
    assert before_row is not None
    for column in ("state", "session_ciphertext", "session_version", "lease_id", "fencing_token"):
        assert getattr(after_row, column) == getattr(before_row, column), column
    assert len(audit_events(database_url)) == before_events
    assert garmin.request_count() == before_garmin

    # 2. Every allowed role gets past authentication and authorisation (what the call then
    #    answers is the RPC's business). Destructive calls go last.
    order: Callable[[str], int] = lambda rpc: rpc in {"DeleteSession", "ReportInvalidated"}  # noqa: E731
    allowed = {}
    for rpc in sorted(calls, key=order):
        for role in sorted(ALLOWED[rpc]):
            allowed[rpc, role] = answer(replica, rpc, calls[rpc], f"Bearer {ROLE_TOKENS[role]}")
    assert all(outcome not in {UNAUTHENTICATED, FORBIDDEN} for outcome in allowed.values()), allowed
    assert len(refused) + len(allowed) == len(RPC_ROLES) * len(ROLES) * (len(BAD_CREDENTIALS) + 2)
    record_figures("test_authorization", combinations=len(refused) + len(allowed))
