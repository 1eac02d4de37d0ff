"""`sync_throughput --ext4-volume`: the worker's directory sink on a freshly made ext4
filesystem of its own (an image file, loop-mounted), as deploy/ gives the worker a volume of
its own (a PersistentVolumeClaim).

Why not a directory on the machine's root filesystem: there, what a synced user costs depends
on everyone else. syncfs(2) writes back every dirty page of the whole filesystem, PostgreSQL's
included, in the caller's time; and ext4 allocating an inode skips, one by one, the inodes
deleted in the last minutes (`recently_deleted`: it reads the inode table for each), so a
filesystem where earlier runs or test suites just removed thousands of files makes every new
file slower. Back to back on this box's root filesystem, the same code's worker CPU per user
went 3.5, 9.2, 11.9, 7.3, 9.1 ms; on a fresh volume 3.1-3.6 ms each time.

Needs root, mkfs.ext4 and a loop device; the image is sparse, in /var/tmp (on disk, not a
tmpfs), and removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

IMAGE_DIRECTORY = "/var/tmp"  # noqa: S108 - on disk by the FHS, unlike /tmp on many systems


def unavailable() -> str | None:
    """Why a volume cannot be made here (None: it can)."""
    if os.geteuid() != 0:
        return "--ext4-volume needs root (mount)"
    missing = [tool for tool in ("mkfs.ext4", "mount", "umount") if shutil.which(tool) is None]
    if missing:
        return f"--ext4-volume needs {', '.join(missing)}"
    if not Path("/dev/loop-control").exists():
        return "--ext4-volume needs loop devices (/dev/loop-control)"
    return None


@contextlib.contextmanager
def fresh_ext4(size_mb: int) -> Iterator[Path]:
    """A mounted, empty ext4 filesystem of `size_mb` MiB; unmounted and deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="garmin-sync-ext4-", dir=IMAGE_DIRECTORY) as holder:
        image, mount_point = Path(holder) / "volume.img", Path(holder) / "mnt"
        mount_point.mkdir()
        with image.open("wb") as blank:
            blank.truncate(size_mb << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
        subprocess.run(
            ["mount", "-o", "loop", str(image), str(mount_point)], check=True, capture_output=True
        )
        try:
            yield mount_point
        finally:
            _unmount(mount_point)


def _unmount(mount_point: Path) -> None:
    """Unmount; if a process still has something open in it (umount: "target is busy"),
    detach it lazily instead, so that the temporary directory's cleanup never walks into
    the volume, and the kernel lets go of it once that process does."""
    busy = subprocess.run(["umount", str(mount_point)], check=False, capture_output=True)
    if busy.returncode != 0:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True, capture_output=True)
