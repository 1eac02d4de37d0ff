"""benchmarks/ext4_volume.py: `sync_throughput --ext4-volume` writes on an ext4 filesystem
made for the run, mounted while it runs and gone afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.ext4_volume import fresh_ext4, unavailable


def mounted_filesystems() -> dict[str, str]:
    """Mount point -> filesystem type, from /proc/mounts."""
    lines = Path("/proc/mounts").read_text(encoding="utf-8").splitlines()
    return {fields[1]: fields[2] for fields in (line.split() for line in lines)}


def test_a_fresh_ext4_volume_is_mounted_empty_and_removed_after() -> None:
    if (why := unavailable()) is not None:
        pytest.skip(why)

    with fresh_ext4(64) as volume:
        assert mounted_filesystems().get(str(volume)) == "ext4"
        assert {entry.name for entry in volume.iterdir()} <= {"lost+found"}
        (volume / "item.json").write_bytes(b"{}")

    assert str(volume) not in mounted_filesystems()
    assert not volume.parent.exists()  # the image and its mount point are deleted


def test_a_volume_still_in_use_is_detached_and_its_files_are_left_alone() -> None:
    """Something still open inside the volume (a process that outlived the run) makes a plain
    umount fail: the volume is detached lazily, and the cleanup deletes the image and the
    empty mount point, not the files inside the volume."""
    if (why := unavailable()) is not None:
        pytest.skip(why)

    with fresh_ext4(64) as volume:
        item = volume / "item.json"
        item.write_bytes(b"{}")
        held = item.open("rb")
    try:
        assert str(volume) not in mounted_filesystems()
        assert not volume.parent.exists()
        assert held.read() == b"{}"  # the file still reads: the filesystem was not torn down
    finally:
        held.close()
