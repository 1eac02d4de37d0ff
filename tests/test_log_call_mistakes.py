"""A log call whose arguments do not fit its format (a library's mistake) must not raise into
the code that logged it, and must not print its arguments: they may hold a secret.

Before: the redaction filter rendered the message outside logging's own error handling, so a
`log.warning("%s %s", one)` raised TypeError in the caller (in a gRPC handler: INTERNAL; in
a background thread: the thread's end)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from garmin_client.logging_setup import JsonFormatter, RedactingFilter

SECRET = "refresh-token-value-never-printed"


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError(SECRET)


@pytest.fixture
def production_handler() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("tests.log_call_mistakes")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger, stream
    logger.removeHandler(handler)
    logger.propagate = True


@pytest.mark.parametrize(
    ("message", "args"),
    [
        ("%s and %s", (SECRET,)),  # too few arguments
        ("%d", (SECRET,)),  # the wrong type
        ("%s", (_Unprintable(),)),  # an argument whose str() raises
    ],
)
def test_a_mismatched_log_call_neither_raises_nor_prints_its_arguments(
    production_handler: tuple[logging.Logger, io.StringIO],
    message: str,
    args: tuple[object, ...],
) -> None:
    logger, stream = production_handler
    logger.warning(message, *args)  # before: raised TypeError / RuntimeError here

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 1
    assert lines[0]["level"] == "WARNING"
    assert lines[0]["logger"] == "tests.log_call_mistakes"
    assert message in lines[0]["message"]  # where to look, without the values
    assert SECRET not in stream.getvalue()


def test_a_well_formed_call_is_rendered_as_before(
    production_handler: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = production_handler
    logger.info("%s synced %d activities", "alice", 20)
    assert json.loads(stream.getvalue())["message"] == "alice synced 20 activities"
