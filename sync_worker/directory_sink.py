"""The directory sink: one folder per user on a volume, each item written atomically and
fenced by the lease's token under flock(2)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
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


class DirectorySink:
    """``DIR/<user_id>/activities/<activityId>.json`` (+ ``.zip`` with the original file).

    Writes go to a temporary file in the same directory, are fsynced, then renamed over the
    target, so a reader (or a crash) never sees half an item. The user's fencing token is kept
    in ``DIR/<user_id>/.fencing-token`` and checked under flock(2) around every write.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkError(f"cannot create the output directory: {exc.strerror}") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise SinkError("the output directory is not writable")

    def for_user(self, user_id: str, fencing_token: int) -> _DirectoryUserSink:
        folder = self.root / check_user_id(user_id)
        try:
            (folder / "activities").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkError(f"cannot create the user's directory: {exc.strerror}") from None
        return claimed(_DirectoryUserSink(folder, fencing_token))

    def close(self) -> None:
        return None


class _DirectoryUserSink:
    def __init__(self, folder: Path, fencing_token: int) -> None:
        self._activities = folder / "activities"
        self._token = fencing_token
        self._fence = os.open(folder / _FENCE_FILE, os.O_RDWR | os.O_CREAT, 0o600)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fence)

    @contextlib.contextmanager
    def _fenced(self) -> Iterator[None]:
        """Hold the user's fence while checking our token and writing."""
        fcntl.flock(self._fence, fcntl.LOCK_EX)
        try:
            os.lseek(self._fence, 0, os.SEEK_SET)
            raw = os.read(self._fence, 64).strip()
            recorded = int(raw) if raw.isdigit() else 0
            if recorded > self._token:
                raise FencingRefused(
                    f"a newer lease holder (fencing token {recorded}) has written for this user"
                )
            if recorded < self._token:
                os.ftruncate(self._fence, 0)
                os.pwrite(self._fence, f"{self._token}\n".encode(), 0)
                os.fsync(self._fence)
            yield
        finally:
            fcntl.flock(self._fence, fcntl.LOCK_UN)

    def claim(self) -> None:
        with self._fenced():
            pass

    def has_file(self, activity_id: int) -> bool:
        return (self._activities / f"{activity_id}.zip").is_file()

    def write_file(self, activity_id: int, content: bytes) -> bool:
        return self._write(self._activities / f"{activity_id}.zip", content)

    def write_summary(self, activity: Activity) -> bool:
        path = self._activities / f"{activity.activity_id}.json"
        return self._write(path, summary_bytes(activity.summary))

    def _write(self, path: Path, content: bytes) -> bool:
        try:
            with self._fenced():
                return _atomic_write(path, content)
        except OSError as exc:
            raise SinkError(f"cannot write {path.name}: {exc.strerror}") from None


def _atomic_write(path: Path, content: bytes) -> bool:
    """Temp file in the same directory, fsync, rename, fsync the directory. False when the
    file already holds exactly this content (nothing is written twice)."""
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size == len(content) and path.read_bytes() == content:
            return False
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        Path(temporary).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(temporary).unlink()
        raise
    # The rename itself must survive a power cut too.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return True
