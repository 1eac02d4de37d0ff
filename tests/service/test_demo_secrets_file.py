"""The demo's dev-secrets.json (a development encryption key and caller tokens) is never
readable by other local users, not even for the moment between writing it and restricting it.
Before, it was written with the process's umask (0644 under umask 022) and chmod-ed after."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from auth_service.demo import DemoState


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_secrets_file_is_owner_only_from_its_first_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    previous_umask = os.umask(0o022)
    seen: list[tuple[int, int]] = []  # (mode, size) of the file whenever its mode is changed
    real_chmod = Path.chmod

    def watching_chmod(self: Path, mode: int, **kwargs: object) -> None:
        if self.name == "dev-secrets.json" and self.exists():
            seen.append((_mode(self), self.stat().st_size))
        real_chmod(self, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "chmod", watching_chmod)
    try:
        state = DemoState.load_or_create(tmp_path / "demo")
    finally:
        os.umask(previous_umask)
    path = tmp_path / "demo" / "dev-secrets.json"
    assert _mode(path) == 0o600
    exposed = [(oct(mode), size) for mode, size in seen if size and mode & 0o077]
    assert not exposed, f"the key and tokens were on disk with mode {exposed} before the chmod"
    # And a second run reads back the same development values.
    assert DemoState.load_or_create(tmp_path / "demo") == state
