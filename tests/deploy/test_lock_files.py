"""requirements/*.lock (scripts/lock): every pin of pyproject.toml is locked at the same
version, every locked package carries hashes, and the .venv holds exactly what dev.lock says."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
# `name==version ; marker \` then its `--hash=sha256:...` lines.
# `name==version` may name extras too (`name[extra]==version`): see scripts/lock.
ENTRY = re.compile(
    r"^([A-Za-z0-9._-]+)(?:\[[A-Za-z0-9._,-]+\])?==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$"
)


def lock(name: str) -> dict[str, tuple[str, str | None, int]]:
    """package -> (version, marker, number of hashes)."""
    entries: dict[str, tuple[str, str | None, int]] = {}
    current = None
    for line in (LOCKS / name).read_text(encoding="utf-8").splitlines():
        match = ENTRY.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            entries[current] = (match.group(2), match.group(3), 0)
        elif line.strip().startswith("--hash=sha256:") and current is not None:
            version, marker, hashes = entries[current]
            entries[current] = (version, marker, hashes + 1)
    assert entries, name
    return entries


def pyproject() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def pins(requirements: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for text in requirements:
        requirement = Requirement(text)
        [specifier] = requirement.specifier
        assert specifier.operator == "==", text  # pyproject pins exactly
        found[canonicalize_name(requirement.name)] = specifier.version
    return found


@pytest.mark.parametrize("name", ["build.lock", "runtime.lock", "dev.lock", "checkov.lock"])
def test_every_locked_package_has_hashes(name: str) -> None:
    for package, (_, _, hashes) in lock(name).items():
        assert hashes >= 1, (name, package)


def test_every_pin_of_pyproject_is_locked_at_its_version() -> None:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    runtime = pins(project["dependencies"])
    dev = pins(project["optional-dependencies"]["dev"])
    runtime_lock, dev_lock = lock("runtime.lock"), lock("dev.lock")
    for package, version in runtime.items():
        assert runtime_lock[package][0] == version, package
    for package, version in {**runtime, **dev}.items():
        assert dev_lock[package][0] == version, package
    # One version of each package in the image and in CI.
    for package, (version, _, _) in runtime_lock.items():
        assert dev_lock[package][0] == version, package


def test_the_build_backend_is_locked_at_the_version_pyproject_builds_with() -> None:
    build_system = pyproject()["build-system"]
    assert isinstance(build_system, dict)
    requires: dict[str, str] = {
        canonicalize_name(Requirement(r).name): r for r in build_system["requires"]
    }
    build_lock = lock("build.lock")
    assert set(requires) <= set(build_lock)
    assert requires["setuptools"] == f"setuptools=={build_lock['setuptools'][0]}"
    assert lock("checkov.lock")["checkov"][0] == "3.3.30"


def test_the_venv_holds_exactly_the_dev_lock() -> None:
    # ensure_venv installs from the lock: every package for this platform at its version.
    for package, (version, marker, _) in lock("dev.lock").items():
        if marker and not Marker(marker).evaluate():
            continue
        assert metadata.version(package) == version, package
