"""The directory sink: one folder per user on a volume, each item written atomically and
fenced by the lease's token under flock(2), made durable once per user by commit()."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from sync_worker.sinks import (
    Activity,
    FencingRefused,
    SinkError,
    check_user_id,
    claimed,
    summary_bytes,
)

_FENCE_FILE: Final = ".fencing-token"


@dataclass
class FsyncCounts:
    """How many fsyncs the sink issued, by kind (what its durability costs; read by tests
    and benchmarks). Shared by every user's sink: updated under a lock."""

    items: int = 0
    directories: int = 0
    fences: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, *, items: int = 0, directories: int = 0, fences: int = 0) -> None:
        with self._lock:
            self.items += items
            self.directories += directories
            self.fences += fences


class DirectorySink:
    """``DIR/<user_id>/activities/<activityId>.json`` (+ ``.zip`` with the original file).

    Each item goes to a temporary file in the same directory, is fsynced, then renamed over
    the target, so a reader (or a crash, even a power cut) never sees half an item. The
    renames become durable together: ``commit()`` fsyncs the user's directory once, before
    the worker releases the lease (which moves synced_through past those items). The user's
    fencing token is kept in ``DIR/<user_id>/.fencing-token`` and checked under flock(2)
    around every write.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fsyncs = FsyncCounts()

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkError(f"cannot create the output directory: {exc.strerror}") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise SinkError("the output directory is not writable")

    def for_user(self, user_id: str, fencing_token: int) -> _DirectoryUserSink:
        folder = self.root / check_user_id(user_id)
        # The user's first claim creates its folder: the entries in the root and the folder
        # are made durable by that sync's commit. (Were a worker to die between the two, the
        # next claim comes a lease ttl later, long after the kernel's own journal commit.)
        fresh = not (folder / _FENCE_FILE).exists()
        try:
            (folder / "activities").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkError(f"cannot create the user's directory: {exc.strerror}") from None
        directories = [folder / "activities", *((folder, self.root) if fresh else ())]
        return claimed(_DirectoryUserSink(folder, fencing_token, self.fsyncs, directories))

    def close(self) -> None:
        return None


class _DirectoryUserSink:
    def __init__(
        self, folder: Path, fencing_token: int, fsyncs: FsyncCounts, directories: list[Path]
    ) -> None:
        self._activities = folder / "activities"
        self._token = fencing_token
        self._fsyncs = fsyncs
        # Directories whose entries commit() must make durable: the activities directory
        # once an item was written or found in place (a previous run may have renamed it and
        # died before its commit), the folder and the root on the user's first sync.
        self._directories = directories
        self._touched = len(directories) > 1
        self._fence = os.open(folder / _FENCE_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        # Items are opened, renamed and made durable relative to this descriptor: no path
        # is resolved (or built) per item.
        try:
            self._activities_fd = os.open(self._activities, _DIRECTORY_FLAGS)
        except BaseException:
            os.close(self._fence)
            raise

    def close(self) -> None:
        for fd in (self._activities_fd, self._fence):
            with contextlib.suppress(OSError):
                os.close(fd)

    @contextlib.contextmanager
    def _fenced(self) -> Iterator[None]:
        """Hold the user's fence while checking our token and writing."""
        fcntl.flock(self._fence, fcntl.LOCK_EX)
        try:
            raw = os.pread(self._fence, 64, 0).strip()
            recorded = int(raw) if raw.isdigit() else 0
            if recorded > self._token:
                raise FencingRefused(
                    f"a newer lease holder (fencing token {recorded}) has written for this user"
                )
            if recorded < self._token:
                os.ftruncate(self._fence, 0)
                os.pwrite(self._fence, f"{self._token}\n".encode(), 0)
                os.fsync(self._fence)
                self._fsyncs.add(fences=1)
            yield
        finally:
            fcntl.flock(self._fence, fcntl.LOCK_UN)

    def claim(self) -> None:
        with self._fenced():
            pass

    def has_file(self, activity_id: int) -> bool:
        try:
            mode = os.stat(f"{activity_id}.zip", dir_fd=self._activities_fd).st_mode
        except OSError as exc:
            # What Path.is_file() takes for "no such file" (anything else is a sink error).
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return False
            raise SinkError(f"cannot look for {activity_id}.zip: {exc.strerror}") from None
        return stat.S_ISREG(mode)

    def write_file(self, activity_id: int, content: bytes) -> bool:
        return self._write(f"{activity_id}.zip", content)

    def write_summary(self, activity: Activity) -> bool:
        return self._write(f"{activity.activity_id}.json", summary_bytes(activity.summary))

    def commit(self) -> None:
        """One fsync per directory holding new entries: every item written (or found in
        place) since the claim is now durable, names included."""
        if not self._touched:
            return
        try:
            for directory in self._directories:
                if directory == self._activities:
                    os.fsync(self._activities_fd)
                else:
                    _fsync_directory(directory)
        except OSError as exc:
            raise SinkError(f"cannot make the user's items durable: {exc.strerror}") from None
        self._fsyncs.add(directories=len(self._directories))
        self._directories = [self._activities]
        self._touched = False

    def _write(self, name: str, content: bytes) -> bool:
        try:
            with self._fenced():
                self._touched = True
                written = _atomic_write(self._activities_fd, name, content)
        except OSError as exc:
            raise SinkError(f"cannot write {name}: {exc.strerror}") from None
        if written:
            self._fsyncs.add(items=1)
        return written


# The temporary file's flags: never follow a link planted under its name, and replace what a
# writer that died mid-item left there.
_TEMPORARY_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
_DIRECTORY_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def _atomic_write(directory: int, name: str, content: bytes) -> bool:
    """Temp file in the same directory, fsync, rename (the directory is fsynced by commit()).
    False when the file already holds exactly this content (nothing is written twice).

    The caller holds the user's fence, which every writer of the directory takes around
    each write: one writer at a time, so the temporary file's name can be fixed (a random
    one costs a third of a small item's CPU). Plain descriptors rather than a buffered file
    object, and names relative to the directory's descriptor, for the same reason: this runs
    once per item."""
    if _holds(directory, name, content):
        return False
    temporary = f".{name}.tmp"
    fd = os.open(temporary, _TEMPORARY_FLAGS, 0o600, dir_fd=directory)
    try:
        try:
            _write_all(fd, content)
            # The content is on disk before the name points at it: after a power cut the
            # name holds the old item or the whole new one, never a torn one.
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=directory)
        raise
    return True


def _holds(directory: int, name: str, content: bytes) -> bool:
    """Whether the file `name` holds exactly `content` (False when there is none)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=directory)
    except FileNotFoundError:
        return False
    try:
        if os.fstat(fd).st_size != len(content):
            return False
        return os.read(fd, len(content) + 1) == content
    finally:
        os.close(fd)


def _write_all(fd: int, content: bytes) -> None:
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
