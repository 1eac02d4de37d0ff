"""The image installs the project's *wheel* (Dockerfile: `pip wheel . && pip install ...`), not
the editable install the test suite runs on. Build that wheel the way the Dockerfile does,
from exactly what the Dockerfile copies, and check that it holds every package of the source
tree and that the programs the image runs import from it alone. Before, pyproject.toml's
package list left out auth_service.upstream.di: `serve` in the image died with
ModuleNotFoundError while `migrate` and `check-config` passed, and every test (on the editable
install) passed too."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _copied_by_the_builder() -> list[str]:
    """What the Dockerfile's builder stage COPYs from the build context (its COPY lines
    without --from), read from the Dockerfile itself so the two cannot drift apart."""
    copied: list[str] = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(word.startswith("--") for word in words):
            copied += [source for source in words[1:-1] if not source.startswith("requirements")]
    return copied


# package-dir of pyproject.toml: where each installed top-level package comes from.
SOURCES = {
    "auth_service": "auth_service",
    "sync_worker": "sync_worker",
    "garmin_client": "garmin_client",
    "garmin_auth": "protos/garmin_auth",
    "auth_service_migrations": "migrations",
}


@pytest.fixture(scope="module")
def image_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel's files as the image's venv holds them (the emulator deleted)."""
    work = tmp_path_factory.mktemp("image-build")
    source = work / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in _copied_by_the_builder():
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=ignore)
        else:
            shutil.copy2(origin, source / name)
    wheels = work / "wheels"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-cache-dir",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            ".",
        ],
        cwd=source,
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [wheel] = wheels.glob("garmin_auth-*.whl")
    site = work / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    # Dockerfile: `rm -r .../site-packages/garmin_emulator`.
    shutil.rmtree(site / "garmin_emulator")
    return site


def test_the_wheel_holds_every_package_of_the_source_tree(image_site: Path) -> None:
    missing = []
    for package, folder in SOURCES.items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            if "__pycache__" in init.parts:
                continue
            relative = init.parent.relative_to(ROOT / folder)
            installed = image_site / package / relative / "__init__.py"
            if not installed.exists():
                missing.append(".".join((package, *relative.parts)))
    assert missing == [], f"packages the image's wheel leaves out: {missing}"


@pytest.mark.parametrize(
    "module",
    # What `garmin-auth-service serve` and `check-config` (the Deployment's containers) load.
    ["auth_service.server", "auth_service.api.convert"],
)
def test_the_images_programs_import_from_the_wheel_alone(image_site: Path, module: str) -> None:
    # -S: no .pth file runs, so the editable install's finder (which maps the source tree)
    # is not there; the wheel's files come first, the locked dependencies after them.
    dependencies = sysconfig.get_paths()["purelib"]
    code = (
        "import importlib, sys\n"
        f"sys.path[:0] = [{str(image_site)!r}, {dependencies!r}]\n"
        f"importlib.import_module({module!r})\n"
        "print('imported')\n"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=image_site.parent,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "imported" in result.stdout
