"""The access log: lines recorded on RPC threads, written by one writer thread in batches."""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime

import pytest

from auth_service.api.access_log import AccessLog
from garmin_client.logging_setup import JsonFormatter, RedactingFilter


class Lines(logging.Handler):
    """The records a logger handed to its handler, as the service's JSON lines."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.addFilter(RedactingFilter())
        self.lines: list[dict[str, object]] = []
        self.threads: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))
        self.threads.add(threading.current_thread().name)


@pytest.fixture
def lines() -> Lines:
    handler = Lines()
    logger = logging.getLogger("tests.access_log")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return handler


def test_lines_are_written_by_the_writer_with_their_calls_time(lines: Lines) -> None:
    access_log = AccessLog(0.05, logger=logging.getLogger("tests.access_log")).start()
    try:
        before = time.time()
        access_log.record("LeaseSession", "worker", "OK", 0.0123)
        access_log.record("ReleaseLease", None, "LEASE_LOST", 0.002)
        assert lines.lines == []  # nothing on the recording thread
        deadline = time.monotonic() + 5
        while len(lines.lines) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        access_log.close()
    first, second = lines.lines
    assert first["message"] == "LeaseSession OK"
    assert first["rpc"] == "LeaseSession"
    assert first["caller"] == "worker"
    assert first["outcome"] == "OK"
    assert first["latency_ms"] == 12.3
    assert first["level"] == "INFO"
    assert first["logger"] == "tests.access_log"
    assert second["message"] == "ReleaseLease LEASE_LOST"
    assert "caller" not in second
    assert lines.threads == {"access-log"}
    assert before - 0.001 <= datetime.fromisoformat(str(first["time"])).timestamp()


def test_a_line_carries_the_time_its_call_ended_not_when_it_was_written(lines: Lines) -> None:
    access_log = AccessLog(3600, logger=logging.getLogger("tests.access_log")).start()
    recorded = time.time()
    access_log.record("GetStatus", "reader", "OK", 0.001)
    time.sleep(0.5)
    access_log.close()
    (line,) = lines.lines
    assert abs(datetime.fromisoformat(str(line["time"])).timestamp() - recorded) < 0.01


def test_close_writes_what_is_left_and_later_lines_at_once(lines: Lines) -> None:
    access_log = AccessLog(3600, logger=logging.getLogger("tests.access_log")).start()
    for i in range(100):
        access_log.record(f"Rpc{i}", "worker", "OK", 0.001)
    assert lines.lines == []
    access_log.close()
    assert [line["rpc"] for line in lines.lines] == [f"Rpc{i}" for i in range(100)]
    access_log.record("GetStatus", "reader", "OK", 0.001)
    assert lines.lines[-1]["rpc"] == "GetStatus"


def test_a_writer_behind_drops_lines_and_says_how_many(lines: Lines) -> None:
    access_log = AccessLog(3600, max_pending=10, logger=logging.getLogger("tests.access_log"))
    access_log.start()
    for i in range(25):
        access_log.record(f"Rpc{i}", "worker", "OK", 0.001)
    access_log.close()
    assert [line["rpc"] for line in lines.lines[:10]] == [f"Rpc{i}" for i in range(10)]
    warning = lines.lines[10]
    assert warning["level"] == "WARNING"
    assert warning["message"] == "15 access log lines dropped: the log writer fell behind"
    assert len(lines.lines) == 11


def test_nothing_is_kept_when_the_logger_is_not_enabled_for_info(lines: Lines) -> None:
    logging.getLogger("tests.access_log").setLevel(logging.WARNING)
    access_log = AccessLog(3600, max_pending=1, logger=logging.getLogger("tests.access_log"))
    access_log.start()
    for _ in range(5):
        access_log.record("GetStatus", "reader", "OK", 0.001)
    access_log.close()
    assert lines.lines == []  # no line, and no drop warning either


def test_immediate_writes_on_the_recording_thread(lines: Lines) -> None:
    access_log = AccessLog.immediate(logging.getLogger("tests.access_log"))
    access_log.record("GetStatus", "reader", "OK", 0.001)
    assert [line["rpc"] for line in lines.lines] == ["GetStatus"]
    assert lines.threads == {threading.current_thread().name}


def test_secrets_in_a_line_are_redacted(lines: Lines) -> None:
    access_log = AccessLog.immediate(logging.getLogger("tests.access_log"))
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEyMzQ1Njc4OTAifQ.c2lnbmF0dXJlLXZhbHVl"
    access_log.record("GetStatus", token, "OK", 0.001)
    assert token not in json.dumps(lines.lines)
