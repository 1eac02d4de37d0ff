"""Request bytes that are not a message of the RPC's type answer INVALID_ARGUMENT (after
the caller was admitted), never gRPC's own INTERNAL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from auth_service.domain.errors import FieldViolation, InvalidArgument

Deserializer = Callable[[bytes], Any]


class Undecodable:
    """Stands for request bytes that are not a well-formed message of the RPC's type.

    gRPC itself answers INTERNAL ("Exception deserializing request!") when a deserializer
    raises, before any interceptor runs; bad input must answer INVALID_ARGUMENT instead, and
    only after the caller was authenticated (an anonymous caller learns nothing more)."""

    def __init__(self, message_name: str) -> None:
        self.message_name = message_name


def tolerant(deserializer: Deserializer | None) -> Deserializer | None:
    if deserializer is None:
        return None
    message_name = getattr(getattr(deserializer, "__self__", None), "__name__", "request")

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        # Whatever the protobuf runtime raises on malformed bytes (DecodeError, invalid
        # UTF-8 in a string field, ...): the bytes, not the service, are at fault.
        except Exception:  # noqa: BLE001
            return Undecodable(message_name)

    return deserialize


def refuse_if_undecodable(request: Any) -> None:
    if isinstance(request, Undecodable):
        raise InvalidArgument(
            [FieldViolation("request", f"is not a well-formed {request.message_name} message")]
        )


def checked_stream(requests: Iterator[Any]) -> Iterator[Any]:
    for request in requests:
        refuse_if_undecodable(request)
        yield request
