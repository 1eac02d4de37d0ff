"""Removing a token from the callers file revokes it without a restart, however the file was
written. Before, the registry told an edit by the file's size and modification time alone: a
revoking edit of the same size copied in with its times kept (cp -p, rsync -a, tar) was never
reloaded, and the revoked token kept working. The inode and change time now count too."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from auth_service.api.callers import CallerRegistry, token_sha256
from auth_service.domain.errors import CallerUnauthenticated

OLD_TOKEN = "old-worker-token-0123456789abcdef"
NEW_TOKEN = "new-worker-token-0123456789abcdef"
# How often the registry looks at the file (api.callers._RELOAD_CHECK_SECONDS), and a margin.
RELOAD_WAIT_SECONDS = 2.2


def _callers(token: str) -> str:
    return (
        f'[[callers]]\nname = "worker"\ntoken_sha256 = "{token_sha256(token)}"\n'
        'roles = ["worker"]\n'
    )


def test_a_revoking_edit_that_keeps_size_and_mtime_is_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "callers.toml"
    path.write_text(_callers(OLD_TOKEN), encoding="utf-8")
    registry = CallerRegistry(path)
    assert registry.authenticate(f"Bearer {OLD_TOKEN}").name == "worker"
    before = path.stat()

    # The operator replaces the old token by a new one; the copy keeps the old times.
    path.write_text(_callers(NEW_TOKEN), encoding="utf-8")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    time.sleep(RELOAD_WAIT_SECONDS)

    with pytest.raises(CallerUnauthenticated):
        registry.authenticate(f"Bearer {OLD_TOKEN}")
    assert registry.authenticate(f"Bearer {NEW_TOKEN}").name == "worker"
