"""The directory sink: one folder per user on a volume, each item written to a temporary file
under the lease's fence (flock(2) and the fencing token), and put in place by commit(): one
flush of the data, the renames, one fsync of the directory, once per user."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import platform
import re
import stat
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, cast

from sync_worker.sinks import (
    Activity,
    FencingRefused,
    SinkError,
    check_user_id,
    claimed,
    summary_bytes,
)

_FENCE_FILE: Final = ".fencing-token"
# Fencing tokens are 64-bit: 19 digits, zero-padded so that every write covers the last.
_FENCE_WIDTH: Final = 19


@dataclass
class FsyncCounts:
    """How many fsyncs the sink issued, by kind (what its durability costs; read by tests
    and benchmarks). Shared by every user's sink: updated under a lock."""

    items: int = 0  # one file's data (where syncfs(2) cannot be trusted)
    filesystems: int = 0  # syncfs(2): every item of a commit at once
    directories: int = 0
    fences: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(
        self, *, items: int = 0, filesystems: int = 0, directories: int = 0, fences: int = 0
    ) -> None:
        with self._lock:
            self.items += items
            self.filesystems += filesystems
            self.directories += directories
            self.fences += fences


class DirectorySink:
    """``DIR/<user_id>/activities/<activityId>.json`` (+ ``.zip`` with the original file).

    Each item goes to a temporary file in the same directory. ``commit()``, before the worker
    releases the lease (which moves synced_through past those items), makes their data
    durable with one flush of the filesystem, renames them over their targets and fsyncs the
    directory once: a reader (or a crash, even a power cut) never sees half an item, and a
    user costs two flushes however many items it has, not one per item. Items written by a
    worker that died before its commit are never put in place: their temporary files are
    replaced by the next sync's (which fetches them again: synced_through did not move). The
    user's fencing token is kept in
    ``DIR/<user_id>/.fencing-token`` and checked under flock(2) around every write and
    around the renames.
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
        try:
            return claimed(_DirectoryUserSink(folder, fencing_token, self.fsyncs, directories))
        except OSError as exc:  # opening or writing the fence: EACCES, ENOSPC, EROFS, ...
            raise SinkError(f"cannot claim the user's directory: {exc.strerror}") from None

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
        # Items written to their temporary files since the last commit, in order.
        self._pending: dict[str, None] = {}
        # A flush of their data failed. The kernel reports a writeback error once: a second
        # syncfs or fsync answers 0 although the data never reached the disk, so from then
        # on nothing of this sink is put in place (the next run writes the items again).
        self._flush_failed = False
        self._fence = os.open(folder / _FENCE_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        # Items are opened, renamed and made durable relative to this descriptor: no path
        # is resolved (or built) per item.
        try:
            self._activities_fd = os.open(self._activities, _DIRECTORY_FLAGS)
        except BaseException:
            os.close(self._fence)
            raise

    def close(self) -> None:
        """Remove the temporary files of items never committed (a failed sync), unless a
        newer holder has written since: from then on, those names are its own."""
        if self._pending:
            with contextlib.suppress(OSError, FencingRefused), self._fenced():
                for name in self._pending:
                    with contextlib.suppress(OSError):
                        os.unlink(_temporary(name), dir_fd=self._activities_fd)
            self._pending.clear()
        for fd in (self._activities_fd, self._fence):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._activities_fd = self._fence = -1  # a second close() closes nothing

    @contextlib.contextmanager
    def _fenced(self) -> Iterator[None]:
        """Hold the user's fence while checking our token and writing."""
        fcntl.flock(self._fence, fcntl.LOCK_EX)
        try:
            recorded = _recorded_token(os.pread(self._fence, 64, 0))
            if recorded > self._token:
                raise FencingRefused(
                    f"a newer lease holder (fencing token {recorded}) has written for this user"
                )
            if recorded < self._token:
                # One write of a fixed width over the old token, never a truncation first: a
                # crash between the two would leave an empty fence, which reads as token 0
                # and would let any older holder write again.
                os.pwrite(self._fence, f"{self._token:0{_FENCE_WIDTH}d}\n".encode(), 0)
                os.fsync(self._fence)
                self._fsyncs.add(fences=1)
            yield
        finally:
            fcntl.flock(self._fence, fcntl.LOCK_UN)

    def claim(self) -> None:
        with self._fenced():
            pass

    def has_file(self, activity_id: int) -> bool:
        name = f"{activity_id}.zip"
        if name in self._pending:
            return True
        try:
            mode = os.stat(name, dir_fd=self._activities_fd).st_mode
        except OSError as exc:
            # What Path.is_file() takes for "no such file" (anything else is a sink error).
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return False
            raise SinkError(f"cannot look for {name}: {exc.strerror}") from None
        return stat.S_ISREG(mode)

    def write_file(self, activity_id: int, content: bytes) -> bool:
        return self._write([(f"{activity_id}.zip", content)])[0]

    def write_summary(self, activity: Activity) -> bool:
        return self.write_summaries([activity])[0]

    def write_summaries(self, activities: Sequence[Activity]) -> list[bool]:
        return self._write(
            [
                (f"{activity.activity_id}.json", summary_bytes(activity.summary))
                for activity in activities
            ]
        )

    def commit(self) -> None:
        """Every item written since the claim (or the last commit) durable and in place: one
        flush of their data, the renames under the fence, then one fsync per directory
        holding new entries (the activities directory; on the user's first sync also its
        folder and the root)."""
        if not self._touched:
            return
        if self._flush_failed:
            raise SinkError("an earlier flush of the user's items failed; none is put in place")
        try:
            if self._pending:
                try:
                    self._flush_items()
                except OSError:
                    self._flush_failed = True
                    raise
                with self._fenced():
                    for name in list(self._pending):
                        os.rename(
                            _temporary(name),
                            name,
                            src_dir_fd=self._activities_fd,
                            dst_dir_fd=self._activities_fd,
                        )
                        del self._pending[name]
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

    def _flush_items(self) -> None:
        """The pending items' data on disk before any name points at it: after a power cut a
        name holds the old item or the whole new one, never a torn one."""
        if _SYNCFS is not None:
            if _SYNCFS(self._activities_fd) != 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code))
            self._fsyncs.add(filesystems=1)
            return
        for name in self._pending:
            fd = os.open(_temporary(name), os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._activities_fd)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._fsyncs.add(items=1)

    def _write(self, items: list[tuple[str, bytes]]) -> list[bool]:
        """Each (name, content) to its temporary file, in order, under ONE hold of the fence:
        every system call gives up the GIL, and with many sync threads each costs a handoff
        (16 threads writing users of 20 summaries on tmpfs: 4.6-5.2 ms of CPU per user with
        the fence taken per item, 2.8-3.4 ms per page)."""
        written: list[bool] = []
        name = ""
        try:
            with self._fenced():
                self._touched = True
                for name, content in items:
                    # Against what this sync already wrote for the name (Garmin listed it
                    # twice: the latest wins), else against the item in place.
                    current = _temporary(name) if name in self._pending else name
                    if _holds(self._activities_fd, current, content):
                        written.append(False)
                        continue
                    _write_temporary(self._activities_fd, _temporary(name), content)
                    self._pending[name] = None
                    written.append(True)
        except OSError as exc:
            raise SinkError(f"cannot write {name or 'to the fence'}: {exc.strerror}") from None
        return written


def _syncfs() -> Callable[[int], int] | None:
    """syncfs(2), where it reports write-back errors (Linux 5.8 and later: before, it
    returned 0 even when the data never reached the disk, so each file is fsynced instead)."""
    if not sys.platform.startswith("linux"):
        return None
    release = tuple(int(part) for part in re.findall(r"\d+", platform.release())[:2])
    if release < (5, 8):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except AttributeError:
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return cast(Callable[[int], int], function)


_SYNCFS: Final = _syncfs()


# The temporary file's flags: never follow a link planted under its name, and replace what a
# writer that died mid-item left there.
_TEMPORARY_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
_DIRECTORY_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def _temporary(name: str) -> str:
    """The item's temporary file. One name per item, not per writer: every writer takes the
    user's fence around its writes and renames, so one writer at a time uses it (a random
    name costs a third of a small item's CPU), and a stale holder's file is replaced by the
    newer holder's write, never renamed by it."""
    return f".{name}.tmp"


def _write_temporary(directory: int, temporary: str, content: bytes) -> None:
    """The content in the temporary file, replacing whatever a writer that died left there.
    Plain descriptors rather than a buffered file object, and names relative to the
    directory's descriptor: this runs once per item."""
    fd = os.open(temporary, _TEMPORARY_FLAGS, 0o600, dir_fd=directory)
    try:
        _write_all(fd, content)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=directory)
        raise
    finally:
        os.close(fd)


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


def _recorded_token(raw: bytes) -> int:
    """The token a fence file holds: 0 while it is empty (a folder no holder wrote in yet)."""
    text = raw.strip()
    if not text:
        return 0
    if not text.isdigit():
        # Not ours: refusing is the only safe reading (0 would let any holder write).
        raise SinkError("the user's fencing-token file is unreadable; an operator must check it")
    return int(text)
