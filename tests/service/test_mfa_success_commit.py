"""An MFA success is stored, even when the database refuses its commit for a moment.

Garmin has spent the code (and the SSO's pending login) when SubmitMfa holds the tokens: a
dropped commit lost them, and the user could not finish the sign-in any more (the challenge
stayed claimed, then Garmin no longer held the login). Refresh and ImportSession retried that
commit (auth_service.services.commit_retry); now SubmitMfa does too, while its claim lasts.
"""

from __future__ import annotations

import threading
from typing import Any

import grpc
import pytest
from sqlalchemy.exc import OperationalError

from auth_service.domain.policies import LoginFlow
from auth_service.storage.session_repository import SqlSessionRepository
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.fixtures.servers import ServiceFactory
from tests.service.test_login import PASSWORD, login

pytestmark = pytest.mark.timeout(60)

FLOWS = [pytest.param(LoginFlow.DI, id="di"), pytest.param(LoginFlow.GARTH, id="garth")]


@pytest.mark.parametrize("flow", FLOWS)
def test_a_database_blip_at_the_mfa_commit_does_not_lose_the_sign_in(
    service_factory: ServiceFactory,
    garmin: GarminEmulator,
    flow: LoginFlow,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = service_factory.start(login_flow=flow)
    second = service_factory.start(login_flow=flow)
    garmin.add_user("blip@example.com", PASSWORD, mfa=True, mfa_code="975310")
    challenge = login(first, "blip", "blip@example.com").mfa_challenge_id
    request = pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="975310")

    # The database fails once, at the statement storing the tokens (a restart, a failover).
    original = SqlSessionRepository.install_tokens
    failed = threading.Event()

    def install_once_failing(self: SqlSessionRepository, *args: Any, **kwargs: Any) -> Any:
        if not failed.is_set():
            failed.set()
            raise OperationalError("UPDATE ...", {}, Exception("server closed the connection"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SqlSessionRepository, "install_tokens", install_once_failing)

    answers = []
    for replica in (first, second):
        try:
            answers.append(replica.call("SubmitMfa", request).status.state)
            break
        except grpc.RpcError as error:
            answers.append(error.code().name)
    assert failed.is_set()
    status = first.call("GetStatus", pb.GetStatusRequest(user_id="blip")).status
    assert status.state == pb.SESSION_STATE_ACTIVE, (
        f"Garmin accepted the code, the database failed once, and the sign-in is lost: "
        f"answers {answers}, the user is {pb.SessionState.Name(status.state)}"
    )
