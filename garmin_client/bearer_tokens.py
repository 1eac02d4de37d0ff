"""The one rule for a bearer token a caller can send, shared by the service's `hash-token`
and `new-caller-token` and by the worker's GARMIN_SYNC_AUTH_TOKEN: the service reads whatever
follows "Bearer " (stripped) in the `authorization` metadata, and gRPC carries metadata values
of printable ASCII only (a space inside is part of the token)."""

from __future__ import annotations

UNSENDABLE = (
    "holds a character that is not printable ASCII; a bearer token travels in gRPC metadata, "
    "which carries no other"
)


def is_sendable(token: str) -> bool:
    """Whether gRPC can carry `token` in a header value as it is."""
    return all(" " <= character <= "~" for character in token)
