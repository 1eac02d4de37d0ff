"""`new-caller-token` writes any text TOML can hold, and blames a refusal on the option at fault.

Before, `_toml_string` (json.dumps) left DEL (\\x7f) raw, which TOML refuses: a
`--user-id-prefix` holding it was reported as "--name: not valid TOML", and a `--name`
holding it, which the callers file accepts escaped, was refused. An argument whose bytes are
not UTF-8 was printed with exit 0 as an entry that is not UTF-8, which pasted into the live
file makes the service refuse every caller (3 failures).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from auth_service.api.callers import parse_callers
from tests.service.test_cli import CLI, base_env, run_cli


def test_a_prefix_holding_del_is_blamed_on_the_prefix(tmp_path: Path) -> None:
    result = run_cli(
        *("new-caller-token", "--name", "ok-name", "--role", "worker"),
        *("--user-id-prefix", "tenant\x7f"),
        env=base_env(tmp_path),
    )
    assert result.returncode == 2
    assert "configuration error: --user-id-prefix: " in result.stderr, result.stderr
    assert "token" not in result.stdout


def test_a_name_holding_del_is_written_escaped(tmp_path: Path) -> None:
    name = "ops\x7fteam"
    result = run_cli("new-caller-token", "--name", name, "--role", "viewer", env=base_env(tmp_path))
    assert result.returncode == 0, result.stderr
    entry = "\n".join(result.stdout.strip().splitlines()[2:])
    assert "\x7f" not in entry
    (parsed,) = parse_callers(entry, "printed entry")
    assert parsed.caller.name == name


def test_an_argument_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [os.fsencode(CLI), b"new-caller-token", b"--name", b"caf\xe9", b"--role", b"admin"],
        env=base_env(tmp_path),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.decode() == (
        "garmin-auth-service: configuration error: --name: is not UTF-8 text\n"
    )
    assert result.stdout == b""
