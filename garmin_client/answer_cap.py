"""How much of one Garmin answer a client reads into memory: a body is read in chunks,
decoded (gzip, deflate), and refused once it passes its cap, so a gzip bomb or an endless body
costs the cap, not what it would inflate to."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

# The most of one answer read into memory: a JSON page is kilobytes, an activity's original
# file megabytes. A larger (or endlessly decompressing) body is refused, not read: the worker
# runs a few syncs at once in a few hundred MB (deploy/: 512 MiB, --concurrency 4), and an
# answer near the cap briefly takes twice it (its chunks, then their join).
MAX_ANSWER_BYTES: Final = 32 * 1024 * 1024
# How much of a body is read (and decoded) at a time.
READ_CHUNK_BYTES: Final = 256 * 1024
# The most the auth service reads of a sign-in, ticket exchange or refresh answer: those are a
# few KB of JSON, and a replica holds many such calls at once, each of which may carry a
# rotation it has not stored yet (an OOM-killed replica loses them all).
MAX_AUTH_ANSWER_BYTES: Final = 1024 * 1024


class AnswerTooLarge(Exception):
    """Garmin's answer was larger than its cap (decoded); the rest was not read."""

    def __init__(self, limit: int = MAX_ANSWER_BYTES, *, status: int | None = None) -> None:
        super().__init__(f"larger than {_size(limit)}")
        self.limit = limit
        # The answer's HTTP status, where the reader knew it.
        self.status = status


def read_capped(chunks: Iterator[bytes], limit: int = MAX_ANSWER_BYTES) -> bytes:
    """The body in `chunks`, decoded; AnswerTooLarge past `limit` bytes."""
    parts: list[bytes] = []
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise AnswerTooLarge(limit)
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _size(limit: int) -> str:
    mib = 1024 * 1024
    return f"{limit // mib} MiB" if limit >= mib else f"{limit // 1024} KiB"
