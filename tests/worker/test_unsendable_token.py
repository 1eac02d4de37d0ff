"""A bearer token gRPC cannot send in a header is a configuration error (exit 2, one line
naming the variable, the token never quoted), and the typed client turns any call gRPC refuses
to send into its own AuthServiceError, as its docstring says of every failure.

Before: sync_worker.config took any GARMIN_SYNC_AUTH_TOKEN (or _FILE content). One holding a
byte that is not UTF-8 (os.environ decodes it as a lone surrogate) made the generated stub
raise UnicodeEncodeError, which AuthClient._call (catching grpc.RpcError only) let through:
every sync thread died with its traceback logged, exit 1; a non-ASCII or control character
failed every call INTERNAL, exit 1 or FAILED users, never naming the variable."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from auth_service.operator_commands import check_token
from garmin_client.env import EnvReader
from sync_worker.client import AuthClient, AuthClientConfig
from sync_worker.client_errors import CALL_NOT_SENT, AuthServiceError
from sync_worker.config import auth_token
from tests.worker.test_cli import main_in_process, one_line  # noqa: F401 (a fixture)

pytestmark = pytest.mark.timeout(60)

UNSENDABLE = {
    "not-utf8": "abc\udcffdef",
    "non-ascii": "wörker-token-0123456789",
    "control": "worker\x01token",
}


@pytest.mark.parametrize("token", UNSENDABLE.values(), ids=UNSENDABLE.keys())
def test_a_token_grpc_cannot_send_is_a_configuration_error(
    main_in_process: Callable[..., tuple[int, str, str]],  # noqa: F811
    tmp_path: Path,
    token: str,
) -> None:
    code, _out, err = main_in_process(
        {"GARMIN_SYNC_AUTH_TOKEN": token, "GARMIN_SYNC_AUTH_TARGET": "127.0.0.1:1"},
        "run",
        "--all",
        "--out",
        str(tmp_path),
    )
    assert code == 2
    line = one_line(err)
    assert "GARMIN_SYNC_AUTH_TOKEN: holds a character that is not printable ASCII" in line
    assert token.strip() not in err


def test_a_token_file_holding_one_is_refused_too(
    main_in_process: Callable[..., tuple[int, str, str]],  # noqa: F811
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "auth-token"
    token_file.write_text("wörker-token-0123456789\n", encoding="utf-8")
    code, _out, err = main_in_process(
        {"GARMIN_SYNC_AUTH_TOKEN_FILE": str(token_file), "GARMIN_SYNC_AUTH_TARGET": "127.0.0.1:1"},
        "run",
        "--all",
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 2
    assert "GARMIN_SYNC_AUTH_TOKEN_FILE: holds a character that is not printable ASCII" in (
        one_line(err)
    )
    assert "wörker" not in err


def test_a_token_the_service_hashes_is_one_the_worker_sends() -> None:
    """One rule on both sides (garmin_client.bearer_tokens). Before, the worker refused a
    token with a space inside, which `hash-token` hashes and the service accepts (it reads
    all that follows "Bearer "): a caller entry the worker could never use."""
    token = "a worker token with spaces, 32 characters or more"
    env = EnvReader({"GARMIN_SYNC_AUTH_TOKEN": f" {token} "}, "GARMIN_SYNC_")
    assert auth_token(env) == token
    check_token(token)  # the service's hash-token takes it too


def test_the_typed_client_turns_a_call_grpc_will_not_send_into_its_own_error() -> None:
    client = AuthClient(
        AuthClientConfig(target="127.0.0.1:1", token="abc\udcffdef", timeout_seconds=1, attempts=1)
    )
    try:
        with pytest.raises(AuthServiceError) as raised:
            client.get_status("alice")
    finally:
        client.close()
    assert raised.value.reason == CALL_NOT_SENT
    assert "UnicodeEncodeError" in raised.value.message
    assert "abc" not in str(raised.value)
