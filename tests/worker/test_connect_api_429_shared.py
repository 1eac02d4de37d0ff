"""A 429 the worker meets on Garmin's Connect API holds the user back for every worker run
and every replica until Garmin's Retry-After has passed, on both backends. README (project
rules): "every call to Garmin honours its 429s across all replicas".

Before: the 429 paused only that run, in memory; the next run (a new CronJob pod) leased the
user and called the Connect API again, and GetStatus(validate) called it for the same
account, long before the Retry-After. Now the release reports it (ReleaseLease's
garmin_retry_after, also inside a LeaseNextSession's release), and the service starts the
account's cooldown: LeaseSession answers GARMIN_RATE_LIMITED with the time left,
LeaseNextSession passes the user over, and the gate holds back the service's own calls."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import ACTIVITIES_PATH, PROFILE_PATH, GarminEmulator
from tests.fixtures.servers import Replica, expect_failure
from tests.worker import WORKER_TOKEN, connect, make_config, run_worker

pytestmark = pytest.mark.timeout(90)

RETRY_AFTER = 3600


def _worker_call(service: Replica, rpc: str, request: object) -> object:
    metadata = (("authorization", f"Bearer {WORKER_TOKEN}"),)
    return getattr(service.stub, rpc)(request, metadata=metadata, timeout=20)


def test_next_worker_run_honours_the_connect_api_429(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    connect(service, garmin, "amy", activities=2)
    garmin.fail_next(ACTIVITIES_PATH, 429, retry_after=RETRY_AFTER)

    first = run_worker(make_config(service.target, garmin, tmp_path, users=("amy",), max_runtime=5))
    assert first.outcome("amy") == "RATE_LIMITED"
    calls = garmin.request_count(ACTIVITIES_PATH)
    assert calls == 1

    # The next run, seconds later (another pod): Garmin asked for an hour.
    second = run_worker(
        make_config(service.target, garmin, tmp_path, users=("amy",), max_runtime=5)
    )
    assert garmin.request_count(ACTIVITIES_PATH) == calls, (
        f"the next run called the Connect API for amy within Garmin's Retry-After "
        f"({second.outcome('amy')})"
    )
    # The service answered for Garmin: LeaseSession said GARMIN_RATE_LIMITED.
    assert second.outcome("amy") == "RATE_LIMITED"


def test_service_validation_honours_the_workers_connect_api_429(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    connect(service, garmin, "amy", activities=2)
    garmin.fail_next(ACTIVITIES_PATH, 429, retry_after=RETRY_AFTER)
    first = run_worker(make_config(service.target, garmin, tmp_path, users=("amy",), max_runtime=5))
    assert first.outcome("amy") == "RATE_LIMITED"
    before = garmin.request_count(PROFILE_PATH)

    # The service's own Connect API call for the account the API just rate-limited: refused
    # without calling Garmin is what the fix answers.
    with contextlib.suppress(grpc.RpcError):
        service.call("GetStatus", pb.GetStatusRequest(user_id="amy", validate=True))
    assert garmin.request_count(PROFILE_PATH) == before, (
        "GetStatus(validate) called Garmin's Connect API for amy within the Retry-After "
        "the API gave the worker"
    )


def test_lease_session_answers_garmin_rate_limited_with_the_time_left(
    service: Replica, garmin: GarminEmulator
) -> None:
    """README's error table: RESOURCE_EXHAUSTED GARMIN_RATE_LIMITED, RetryInfo the time left;
    and the audit trail records the cooldown under the ReleaseLease that reported it."""
    connect(service, garmin, "amy")
    lease = _worker_call(
        service, "LeaseSession", pb.LeaseSessionRequest(user_id="amy", holder="w")
    ).lease  # type: ignore[attr-defined]
    _worker_call(
        service,
        "ReleaseLease",
        pb.ReleaseLeaseRequest(lease_id=lease.lease_id, garmin_retry_after=timedelta(minutes=10)),
    )

    refused = expect_failure(
        lambda: _worker_call(
            service, "LeaseSession", pb.LeaseSessionRequest(user_id="amy", holder="w")
        )
    )

    assert (refused.code, refused.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "GARMIN_RATE_LIMITED",
    )
    assert refused.retry_seconds is not None
    assert 590 <= refused.retry_seconds <= 600
    events = service.call("ListAuditEvents", pb.ListAuditEventsRequest(user_id="amy")).events
    assert ("ReleaseLease", "GARMIN_COOLDOWN_STARTED") in {
        (event.rpc, event.outcome_reason) for event in events
    }


def test_a_drain_reports_the_429_with_its_next_lease_next_session(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    """--all hands a 429 that asked for no pause (Retry-After: 0) to its next
    LeaseNextSession's release: the service holds the user back for its default wait (60 s),
    so the next run syncs only the other user. (The run itself pauses its default too, here
    capped at a second by --rate-limit-max-wait.)"""
    connect(service, garmin, "amy", activities=1)
    connect(service, garmin, "ben", activities=1)
    garmin.fail_next(ACTIVITIES_PATH, 429, retry_after=0)
    config = make_config(
        service.target,
        garmin,
        tmp_path,
        all_users=True,
        concurrency=1,
        min_sync_interval=timedelta(0),
    )
    config = replace(config, rate_limit_max_wait=1.0)
    first = run_worker(config)
    assert first.outcome("amy") == "RATE_LIMITED"
    assert first.outcome("ben") == "SYNCED"
    calls = garmin.request_count(ACTIVITIES_PATH)

    second = run_worker(config)

    assert "amy" not in second.users, "the next run leased amy within Garmin's wait"
    assert second.outcome("ben") in ("SYNCED", "NOTHING_NEW")
    assert garmin.request_count(ACTIVITIES_PATH) == calls + 1


def test_one_users_reported_429_does_not_stall_the_other_named_users(
    service: Replica, garmin: GarminEmulator, tmp_path: Path
) -> None:
    """A --user run: the account's cooldown (GARMIN_RATE_LIMITED with ErrorInfo scope=user)
    holds back that user alone. Before, the worker paused the whole run for it: with
    --max-runtime 5, ben was never synced nor reported (from a review of the change)."""
    connect(service, garmin, "amy", activities=1)
    connect(service, garmin, "ben", activities=1)
    # An earlier run met the Connect API's 429 for amy and reported 10 minutes.
    lease = _worker_call(
        service, "LeaseSession", pb.LeaseSessionRequest(user_id="amy", holder="w")
    ).lease  # type: ignore[attr-defined]
    _worker_call(
        service,
        "ReleaseLease",
        pb.ReleaseLeaseRequest(lease_id=lease.lease_id, garmin_retry_after=timedelta(minutes=10)),
    )

    run = run_worker(
        make_config(
            service.target, garmin, tmp_path, users=("amy", "ben"), concurrency=1, max_runtime=5
        )
    )

    assert run.outcome("amy") == "RATE_LIMITED"
    assert "ben" in run.users, f"amy's account cooldown paused the whole run ({run.lines})"
    assert run.outcome("ben") == "SYNCED"
