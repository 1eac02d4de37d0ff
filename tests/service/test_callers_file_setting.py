"""A callers file that cannot be loaded is reported as the bad setting it is: by its variable.

README: "A missing or malformed setting stops it with one line naming the variable." Before,
`serve` stopped on "configuration error: /path/no-such-callers.toml: cannot read (No such file
or directory)" and check-config failed its callers line the same way: the path only, never
GARMIN_AUTH_CALLERS_FILE (4 failures).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from auth_service.checks import run_checks
from tests.service.test_cli import base_env, free_port, run_cli

# (file content or None for no file, what the line says after the variable and the path)
CASES = {
    "missing": (None, "cannot read (No such file or directory)"),
    "malformed": ('[[callers]]\nname = "x"\nroles = ["admin"]\n', "give exactly one of"),
}


def callers_env(tmp_path: Path, case: str) -> tuple[dict[str, str], Path]:
    content, _ = CASES[case]
    path = tmp_path / "callers-file.toml"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    env = base_env(
        tmp_path,
        GARMIN_AUTH_CALLERS_FILE=str(path),
        GARMIN_AUTH_LISTEN=f"127.0.0.1:{free_port()}",
    )
    return env, path


@pytest.mark.parametrize("case", sorted(CASES))
def test_serve_names_the_variable(tmp_path: Path, case: str) -> None:
    env, path = callers_env(tmp_path, case)
    assert run_cli("migrate", env=env).returncode == 0
    result = run_cli("serve", env=env)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        f"garmin-auth-service: configuration error: GARMIN_AUTH_CALLERS_FILE: {path}"
    ), line
    assert CASES[case][1] in line


@pytest.mark.parametrize("case", sorted(CASES))
def test_check_config_names_the_variable(tmp_path: Path, case: str) -> None:
    env, path = callers_env(tmp_path, case)
    (callers,) = [result for result in run_checks(env) if result.name == "callers"]
    assert not callers.ok
    assert callers.detail.startswith(f"GARMIN_AUTH_CALLERS_FILE: {path}"), callers.detail
    assert CASES[case][1] in callers.detail
