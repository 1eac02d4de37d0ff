"""`serve` on a SQLite path with no file refuses it without creating one.

rotate-keys and prune-audit refused such a path (cli._refuse_missing_sqlite_file: "A mistyped
SQLite path must not become a new, empty database file"), and check-config reports it as "the
file does not exist". `serve` refused it too (exit 2, not migrated) but only after
schema_state had connected and so created the empty file: check-config then called the typo
"reachable" and "never migrated" (1 failure). A new file was never servable (it is not
migrated), so nothing that worked needs serve to create it: `migrate` creates the file, and
`demo` migrates its own.
"""

from __future__ import annotations

from pathlib import Path

from tests.service.test_cli import base_env, free_port, run_cli


def test_serve_refuses_a_missing_sqlite_file_and_leaves_none_behind(tmp_path: Path) -> None:
    typo = tmp_path / "garmin-auth.sqlite"
    env = base_env(
        tmp_path,
        GARMIN_AUTH_DATABASE_URL=f"sqlite:///{typo}",
        GARMIN_AUTH_LISTEN=f"127.0.0.1:{free_port()}",
    )
    result = run_cli("serve", env=env)
    assert result.returncode == 2, result.stderr
    assert not typo.exists(), "serve created an empty database file at the mistyped path"
    assert result.stderr.splitlines() == [
        "garmin-auth-service: configuration error: GARMIN_AUTH_DATABASE_URL: the SQLite "
        "database file does not exist (run `garmin-auth-service migrate` to create it)"
    ]
    checked = run_cli("check-config", env=env)
    assert "the file does not exist" in checked.stdout, checked.stdout
