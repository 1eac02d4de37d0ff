"""Where synced activities go: a directory (the default, for a volume) or the worker's own
PostgreSQL database (never the auth service's).

Both sinks are idempotent (a re-run writes nothing twice: identical content is skipped), write
each item atomically (a crash leaves no half-written item), make what they stored durable by
``commit()`` before the lease is released, and fence writes by the lease's
fencing token: once a holder with a higher token has written for a user, a stale holder's
writes are refused with ``FencingRefused``, so a worker whose lease was taken over can never
overwrite the newer holder's data.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from garmin_client.user_ids import USER_ID_RULE, is_user_id
from sync_worker.summary_json import indented_json


class SinkError(Exception):
    """The sink cannot take writes (unreachable, schema missing, disk full...)."""


class FencingRefused(Exception):
    """A lease holder with a higher fencing token has written for this user: we are stale."""


class UnsafeUserId(ValueError):
    """A user id that cannot safely name a directory."""


def check_user_id(user_id: str) -> str:
    """The auth service's rule, checked again here because the id becomes a path."""
    if not is_user_id(user_id):
        raise UnsafeUserId(f"a user id {USER_ID_RULE}")
    return user_id


@dataclass(frozen=True)
class Activity:
    """One activity summary as Garmin listed it."""

    activity_id: int
    summary: dict[str, Any]
    start_time: datetime | None


class UserSink(Protocol):
    """Writes for one user under one lease (one fencing token). Not shared across threads."""

    def has_file(self, activity_id: int) -> bool:
        """Whether the activity's original file is already stored."""
        ...

    def write_file(self, activity_id: int, content: bytes) -> bool:
        """Store the original file; False when identical content was already there."""
        ...

    def write_summary(self, activity: Activity) -> bool:
        """Store the summary; False when identical content was already there."""
        ...

    def write_summaries(self, activities: Sequence[Activity]) -> list[bool]:
        """Store one page's summaries, in order (a later one of the same id wins); for each,
        False when identical content was already there. The fence is checked once for the
        page, not once per summary."""
        ...

    def commit(self) -> None:
        """Make every item stored so far durable (it survives a power cut); called before
        ReleaseLease moves synced_through past those items, and after a sync that failed
        part-way while its lease was still ours (what it stored is kept)."""
        ...

    def close(self) -> None: ...


class Sink(Protocol):
    """A destination for every user's activities. Thread-safe."""

    def check(self) -> None:
        """Raise SinkError unless the sink can take writes (run before leasing anyone)."""
        ...

    def for_user(self, user_id: str, fencing_token: int) -> UserSink:
        """Claim the user's fence with this token (FencingRefused when a newer holder has)."""
        ...

    def close(self) -> None: ...


def summary_bytes(summary: dict[str, Any]) -> bytes:
    """Canonical JSON, so an unchanged summary is byte-identical on every run."""
    try:
        return (indented_json(summary, allow_nan=False) + "\n").encode()
    # A NaN or an infinity (Garmin's JSON may carry them; written bare they are no JSON, and
    # every strict reader of the file fails on it), or a lone surrogate (UnicodeEncodeError:
    # JSON allows it, UTF-8 does not). A summary with neither keeps its bytes.
    except ValueError:
        return (indented_json(mapped_leaves(summary, json_leaf)) + "\n").encode()


def storable(value: Any) -> Any:
    """`value` with what no sink can store replaced: a lone UTF-16 surrogate (a name cut
    inside an emoji, which JSON's \\ud83c escapes allow) becomes U+FFFD, and NUL, which
    PostgreSQL's text and jsonb refuse, is dropped. Only called when storing failed, so the
    usual summary costs nothing."""
    return mapped_leaves(value, storable_leaf)


def storable_leaf(value: Any) -> Any:
    """One leaf (or key) as storable() leaves it."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value).replace("\x00", "")
    return value


def json_leaf(value: Any) -> Any:
    """A leaf as strict JSON takes it: storable, and NaN and infinities (which Python's json
    writes bare, and jsonb refuses) as None, which both sinks store them as."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return storable_leaf(value)


def mapped_leaves(value: Any, leaf: Callable[[Any], Any]) -> Any:
    """A copy of parsed JSON (dicts, lists, leaves) with `leaf` applied to every leaf and
    every key, in order. Without recursion: Garmin's JSON may nest as deep as json.loads
    allows (almost 1000 levels), deeper than Python's stack takes a recursive copy."""
    root: list[Any] = [None]
    pending: list[tuple[Any, Any, Any]] = [(value, root, 0)]
    while pending:
        item, parent, slot = pending.pop()
        if isinstance(item, dict):
            copy: dict[Any, Any] = {}
            children = []
            for key, child in item.items():
                mapped = leaf(key)
                copy[mapped] = None  # the slot, in the original order
                children.append((child, copy, mapped))
            # Filled first to last: of two keys that map alike, the last one's value stays.
            pending.extend(reversed(children))
            parent[slot] = copy
        elif isinstance(item, list):
            parent[slot] = items = [None] * len(item)
            pending.extend((child, items, index) for index, child in enumerate(item))
        else:
            parent[slot] = leaf(item)
    return root[0]


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


_Claimable = TypeVar("_Claimable", bound="_ClaimableSink")


class _ClaimableSink(UserSink, Protocol):
    def claim(self) -> None: ...


def claimed(user_sink: _Claimable) -> _Claimable:
    """The user's sink once its fence is claimed; closed again when the claim fails."""
    try:
        user_sink.claim()
    except BaseException:
        user_sink.close()
        raise
    return user_sink
