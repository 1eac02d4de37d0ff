"""A metadata value that is not UTF-8 (an authorization header with one byte mangled in
transit), sent over a raw HTTP/2 connection (grpc's own client will not send it) to a real
replica, with the service's own log handler: JSON formatter and redaction filter.

gRPC's Cython layer logs every such value at ERROR on `grpc._cython.cygrpc` ("Invalid
encoding on %s", the raw bytes and a traceback) before our code sees the call. The service
turns that record into one fixed WARNING line, and the redaction filter masks a quoted
bearer value whole, past the bad byte (README, Logs: anything that looks like a token is
masked before a line is written)."""

from __future__ import annotations

import io
import json
import logging
import secrets
import time
from collections.abc import Iterator

import pytest

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_client.logging_setup import JsonFormatter, RedactingFilter, quiet_third_party_loggers
from tests.fixtures.raw_h2 import call
from tests.fixtures.servers import Replica

GET_STATUS = "/garmin_auth.v1.GarminAuthService/GetStatus"
# What an operator sees instead: that it happened, not what was sent.
UNDECODABLE_METADATA_LINE = "a request carried metadata that is not UTF-8 (value not logged)"


@pytest.fixture
def production_log() -> Iterator[io.StringIO]:
    """configure_logging's handler (JSON lines, redaction filter), writing to a buffer, with
    the third-party loggers set up as configure_logging sets them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    quiet_third_party_loggers()
    root = logging.getLogger()
    root.addHandler(handler)
    yield stream
    root.removeHandler(handler)


def _mangled_credential() -> tuple[bytes, list[str]]:
    """An authorization value: a token as new-caller-token makes them (43 characters) with a
    byte that is not UTF-8 in its middle; and the token's two halves."""
    token = secrets.token_urlsafe(32)
    head, tail = token[:20], token[20:]
    return b"Bearer " + head.encode() + b"\xa0" + tail.encode(), [head, tail]


def _lines(log: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.getvalue().splitlines()]


def _send_get_status(service: Replica, authorization: bytes) -> None:
    request = pb.GetStatusRequest(user_id="alice").SerializeToString()
    frames = call(service.running.port, GET_STATUS, [(b"authorization", authorization)], request)
    assert frames, "the server did not answer"
    time.sleep(0.5)  # the access log writes in batches


def test_a_credential_with_a_bad_byte_reaches_no_log_line(
    service: Replica, production_log: io.StringIO
) -> None:
    value, halves = _mangled_credential()
    _send_get_status(service, value)
    # The server still serves.
    assert service.call("GetStatus", pb.GetStatusRequest(user_id="alice")).status.user_id == "alice"

    written = production_log.getvalue()
    leaked = [half for half in halves if half in written]
    assert not leaked, f"parts of the presented credential were written: {written}"


def test_the_bad_value_leaves_one_warning_and_the_call_is_refused(
    service: Replica, production_log: io.StringIO
) -> None:
    value, _ = _mangled_credential()
    _send_get_status(service, value)

    lines = _lines(production_log)
    grpc_lines = [line for line in lines if line["logger"] == "grpc._cython.cygrpc"]
    assert grpc_lines == [
        {
            "time": grpc_lines[0]["time"],
            "level": "WARNING",
            "logger": "grpc._cython.cygrpc",
            "message": UNDECODABLE_METADATA_LINE,
        }
    ], "one WARNING line, without the value or a traceback"
    access = [line for line in lines if line["logger"] == "auth_service.rpc"]
    assert [(line["rpc"], line["outcome"], line.get("caller")) for line in access] == [
        ("GetStatus", "CALLER_UNAUTHENTICATED", None)
    ]


def test_other_grpc_lines_pass_unchanged(production_log: io.StringIO) -> None:
    quiet_third_party_loggers()
    logging.getLogger("grpc._cython.cygrpc").error("something else on %s", "port 1234")
    (line,) = _lines(production_log)
    assert (line["level"], line["message"]) == ("ERROR", "something else on port 1234")
