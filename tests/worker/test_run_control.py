"""The run's shared pacing, exit codes, the progress display and secret-free reprs."""

from __future__ import annotations

import io

import grpc
import pytest

from garmin_client.settings import UpstreamSettings
from sync_worker.client import AuthClientConfig
from sync_worker.client_errors import AuthServiceError
from sync_worker.config import WorkerConfig
from sync_worker.control import DEFAULT_RATE_LIMIT_PAUSE, RunControl
from sync_worker.progress import Progress
from sync_worker.runner import EXIT_AUTH_SERVICE, EXIT_FAILED, EXIT_OK, EXIT_SIGTERM, exit_code
from sync_worker.sync import Outcome, SyncOptions, UserResult


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_429_pauses_every_caller_until_retry_after() -> None:
    clock = FakeClock()
    control = RunControl(clock=clock)
    assert control.wait_for_garmin()
    assert control.slow_down(30) == 30
    assert control.pause_remaining() == 30
    control.slow_down(5)  # a shorter pause never shortens a longer one
    assert control.pause_remaining() == 30
    clock.now += 30
    assert control.wait_for_garmin()
    assert control.slow_down(None) == DEFAULT_RATE_LIMIT_PAUSE


def test_a_pause_past_the_deadline_is_not_waited_for() -> None:
    clock = FakeClock()
    control = RunControl(max_runtime=60, clock=clock)
    control.slow_down(3600)
    assert control.wait_for_garmin() is False
    assert control.may_take_users()
    clock.now += 61
    assert control.past_deadline()
    assert not control.may_take_users()


def test_stop_and_fatal_interrupt_waits() -> None:
    control = RunControl()
    control.slow_down(3600)
    control.request_stop()
    assert control.wait_for_garmin() is False
    assert control.stop_requested
    failed = RunControl()
    error = AuthServiceError(grpc.StatusCode.UNAVAILABLE, "", "connection refused")
    failed.fail(error)
    failed.fail(AuthServiceError(grpc.StatusCode.UNAUTHENTICATED, "CALLER_UNAUTHENTICATED", "x"))
    assert failed.fatal is error  # the first cause is kept
    assert failed.interrupted
    assert not failed.may_take_users()


@pytest.mark.parametrize(
    ("outcomes", "stop", "fatal", "expected"),
    [
        ([], False, False, EXIT_OK),
        (
            [Outcome.SYNCED, Outcome.NOTHING_NEW, Outcome.AUTH_EXPIRED, Outcome.RATE_LIMITED],
            False,
            False,
            EXIT_OK,
        ),
        ([Outcome.LEASE_LOST], False, False, EXIT_OK),
        ([Outcome.SYNCED, Outcome.FAILED], False, False, EXIT_FAILED),
        ([Outcome.FAILED], False, True, EXIT_AUTH_SERVICE),
        ([Outcome.FAILED], True, True, EXIT_SIGTERM),
    ],
)
def test_exit_codes(outcomes: list[Outcome], stop: bool, fatal: bool, expected: int) -> None:
    control = RunControl()
    if fatal:
        control.fail(AuthServiceError(grpc.StatusCode.UNAVAILABLE, "", "down"))
    if stop:
        control.request_stop()
    results = [UserResult(f"u{index}", outcome) for index, outcome in enumerate(outcomes)]
    assert exit_code(results, control) == expected


def test_garmin_unavailable_is_not_the_auth_service_being_down() -> None:
    garmin = AuthServiceError(grpc.StatusCode.UNAVAILABLE, "GARMIN_UNAVAILABLE", "Garmin 503")
    assert not garmin.fatal
    assert AuthServiceError(grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE", "").unreachable
    assert AuthServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, "", "").fatal
    assert AuthServiceError(grpc.StatusCode.PERMISSION_DENIED, "CALLER_FORBIDDEN", "").fatal
    lost = AuthServiceError(grpc.StatusCode.FAILED_PRECONDITION, "LEASE_LOST", "")
    assert lost.lease_lost
    assert not lost.fatal


def test_progress_draws_a_bar_on_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(stream, total=4, interval=30, is_tty=True)
    progress.user_started()
    progress.user_finished(UserResult("a", Outcome.SYNCED, items=3))
    progress.close()
    text = stream.getvalue()
    assert "[######..................] 1/4" in text
    assert "SYNCED 1" in text
    assert text.endswith("\n")


def test_progress_logs_periodic_lines_otherwise(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    progress = Progress(stream, total=None, interval=3600, is_tty=False)
    with caplog.at_level("INFO", logger="sync_worker.progress"):
        progress.user_started()
        progress.user_finished(UserResult("a", Outcome.FAILED, detail="Garmin answered HTTP 502"))
        progress.close()
    assert stream.getvalue() == ""
    messages = [record.getMessage() for record in caplog.records]
    # No periodic line within the interval; the final one; a warning for the failure.
    assert messages == [
        "user a: FAILED (Garmin answered HTTP 502)",
        "progress: 1 users done, 0 in flight, 0s (FAILED 1)",
    ]


def test_configuration_reprs_never_show_secrets() -> None:
    auth = AuthClientConfig(target="auth:50051", token="bearer-secret-value")
    upstream = UpstreamSettings(consumer_key="ck", consumer_secret="consumer-secret-value")
    config = WorkerConfig(
        auth=auth,
        sync=SyncOptions(upstream=upstream),
        all_users=True,
        sink_url="postgresql://sync:db-password-value@db/sync",
    )
    shown = repr(config) + repr(auth) + repr(config.sync) + str(config)
    for secret in ("bearer-secret-value", "consumer-secret-value", "db-password-value"):
        assert secret not in shown
    assert "auth:50051" in shown
