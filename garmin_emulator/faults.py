"""Failures tests inject: an HTTP status, a connection reset, a hang or a delay, for the next
requests whose path starts with a prefix."""

from __future__ import annotations

import gzip
import json
import threading
from dataclasses import dataclass

from garmin_emulator.wire import Reply

FAULT_RESET = "reset"
FAULT_HANG = "hang"
# How long a hang lasts when the test gives no delay.
DEFAULT_HANG_SECONDS = 30.0


@dataclass
class Fault:
    """One armed fault; `remaining` counts the requests it still applies to."""

    path_prefix: str
    status: int | str | None
    remaining: int
    retry_after: str | None
    body: bytes | None
    content_type: str | None
    delay: float
    # Sent gzip-compressed with Content-Encoding: gzip, as Garmin's edge answers clients that
    # accept it.
    gzip: bool = False

    def reply(self) -> Reply:
        """The answer of a status fault (``status`` is an int)."""
        assert isinstance(self.status, int)
        body = self.body
        if body is None:
            body = json.dumps({"message": "injected failure", "status": self.status}).encode()
        content_type = self.content_type or (
            "text/html;charset=UTF-8" if body.lstrip().startswith(b"<") else "application/json"
        )
        headers = [("Retry-After", self.retry_after)] if self.retry_after is not None else []
        if self.gzip:
            body = gzip.compress(body, compresslevel=9)
            headers.append(("Content-Encoding", "gzip"))
        return Reply(self.status, body, content_type=content_type, headers=headers)


class Faults:
    """The armed faults, oldest first; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: list[Fault] = []

    def add(  # noqa: PLR0913 - GarminEmulator.fail_next's keywords
        self,
        path_prefix: str,
        status: int | str | None,
        count: int,
        retry_after: str | int | None,
        body: str | bytes | None,
        *,
        content_type: str | None,
        delay: float,
        gzip: bool = False,
    ) -> None:
        """Arm a fault (see GarminEmulator.fail_next)."""
        if isinstance(status, str) and status not in {FAULT_RESET, FAULT_HANG}:
            raise ValueError(f"unknown fault {status!r}")
        if status == FAULT_HANG and delay <= 0:
            delay = DEFAULT_HANG_SECONDS
        raw = body.encode() if isinstance(body, str) else body
        fault = Fault(
            path_prefix=path_prefix,
            status=status,
            remaining=count,
            retry_after=None if retry_after is None else str(retry_after),
            body=raw,
            content_type=content_type,
            delay=delay,
            gzip=gzip,
        )
        with self._lock:
            self._armed.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._armed.clear()

    def take(self, path: str) -> Fault | None:
        """The first armed fault for this path, used up by one."""
        with self._lock:
            for fault in self._armed:
                if fault.remaining > 0 and path.startswith(fault.path_prefix):
                    fault.remaining -= 1
                    return fault
            return None
