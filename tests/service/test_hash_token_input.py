"""`hash-token` refuses, in one line with exit 2, a token no caller could send.

Before, a token read from stdin that was not UTF-8 (a binary paste) died on a traceback,
exit 1: UnicodeEncodeError in token_sha256 under the C.UTF-8 locale (stdin decoded with
surrogateescape), UnicodeDecodeError in readline() under a strict UTF-8 locale. A token of
UTF-8 characters outside printable ASCII was hashed (exit 0), although gRPC metadata, where
a bearer token travels, carries printable ASCII only (2 failures).
"""

from __future__ import annotations

import hashlib
import os
import pty
import subprocess
from pathlib import Path

import pytest

from tests.service.test_cli import CLI, base_env


def hash_token(tmp_path: Path, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [CLI, "hash-token"],
        input=stdin,
        capture_output=True,
        env=base_env(tmp_path),
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "token",
    [b"\xff" * 40, "caf\u00e9-".encode() * 10],
    ids=["not-utf-8", "utf-8-not-ascii"],
)
def test_a_token_that_is_not_printable_ascii_is_refused_in_one_line(
    tmp_path: Path, token: bytes
) -> None:
    result = hash_token(tmp_path, token + b"\n")
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 2, stderr[-600:]
    assert stderr.splitlines() == [
        "garmin-auth-service: configuration error: token: holds a character that is not "
        "printable ASCII; a bearer token travels in gRPC metadata, which carries no other"
    ]
    assert result.stdout == b""


def test_printable_ascii_with_inner_spaces_is_still_hashed(tmp_path: Path) -> None:
    # The service hashes what follows "Bearer " (stripped): a space inside is part of it.
    token = "a token with spaces, 32 characters or more"
    result = hash_token(tmp_path, f"  {token} \n".encode())
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == hashlib.sha256(token.encode()).hexdigest()


def test_a_token_typed_at_the_prompt_is_hashed_as_callers_send_it(tmp_path: Path) -> None:
    """At a terminal the token comes from getpass(), which keeps spaces around it (a paste
    often brings one); the service hashes what follows "Bearer " stripped, and the worker
    strips its token too. Before, the typed spaces were hashed: an entry no caller matched."""
    token = "a-typed-bearer-token-of-forty-characters"
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [CLI, "hash-token"],
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=base_env(tmp_path),
            # No controlling terminal to open as /dev/tty: getpass() reads the pty on stdin.
            start_new_session=True,
        )
        # Typed once the prompt shows: getpass() flushes what was typed before it.
        assert process.stderr is not None
        prompt = b""
        while not prompt.endswith(b"token: "):
            prompt += process.stderr.read(1) or b"!"  # "!": end of stream, fails below
            assert len(prompt) < 4096, prompt
        os.write(controller, f"  {token} \n".encode())
        out, err = process.communicate(timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
    assert process.returncode == 0, err.decode(errors="replace")
    assert out.decode().splitlines()[-1] == hashlib.sha256(token.encode()).hexdigest()
