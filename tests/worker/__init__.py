"""Helpers for the sync worker tests: seeding users, building the worker's configuration,
running it in process, a sink that records what happened, and reading the service's table."""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from auth_service.crypto import Keyring
from auth_service.domain.models import GarminTokens
from auth_service.storage.database import create_engine_for
from auth_service.storage.models import GarminAuthenticationState
from auth_service.storage.secrets import SecretBox
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_client.settings import UpstreamSettings
from garmin_emulator import GarminEmulator
from sync_worker.client import AuthClient, AuthClientConfig
from sync_worker.config import WorkerConfig
from sync_worker.control import RunControl
from sync_worker.directory_sink import DirectorySink
from sync_worker.runner import RunReport, run
from sync_worker.sinks import Activity, Sink, UserSink
from sync_worker.sync import SyncOptions
from tests.fixtures.servers import CONSUMER_KEY, CONSUMER_SECRET, ROLE_TOKENS, Replica
from tests.worker.recording_client import RecordingClient

PASSWORD = "correct horse battery staple"
WORKER_TOKEN = ROLE_TOKENS["worker"]
WORKER_SCRIPT = str(Path(sys.executable).with_name("garmin-sync-worker"))


def email_of(user_id: str) -> str:
    return f"{user_id}@example.com"


def connect(
    service: Replica,
    garmin: GarminEmulator,
    user_id: str,
    *,
    activities: int = 0,
    every: timedelta = timedelta(hours=6),
) -> str:
    """A Garmin account with activities, logged in through the service (admin Login)."""
    email = email_of(user_id)
    garmin.add_user(email, PASSWORD)
    if activities:
        garmin.add_activities(email, activities, every=every)
    answer = service.call("Login", pb.LoginRequest(user_id=user_id, email=email, password=PASSWORD))
    assert answer.outcome == pb.LOGIN_OUTCOME_AUTHENTICATED
    return email


def upstream(garmin: GarminEmulator, *, timeout: float = 2.0, retries: int = 2) -> UpstreamSettings:
    """The service's way to Garmin (with the OAuth1 consumer: tests check what it stored)."""
    return UpstreamSettings(
        consumer_key=CONSUMER_KEY,
        consumer_secret=CONSUMER_SECRET,
        base_url=garmin.url,
        timeout_seconds=timeout,
        retries=retries,
    )


def make_config(
    target: str,
    garmin: GarminEmulator,
    out_dir: Path | None,
    *,
    users: tuple[str, ...] = (),
    all_users: bool = False,
    sink_url: str | None = None,
    token: str = WORKER_TOKEN,
    concurrency: int = 4,
    holder: str = "test-worker",
    max_runtime: float | None = None,
    min_sync_interval: timedelta = timedelta(minutes=15),
    upstream_timeout: float = 2.0,
    upstream_retries: int = 2,
    **sync: Any,
) -> WorkerConfig:
    options = SyncOptions(
        upstream=upstream(garmin, timeout=upstream_timeout, retries=upstream_retries),
        lease_ttl=timedelta(seconds=10),
    )
    return WorkerConfig(
        auth=AuthClientConfig(
            target=target, token=token, timeout_seconds=10, attempts=3, backoff_initial_seconds=0.05
        ),
        sync=replace(options, **sync),
        users=users,
        all_users=all_users,
        concurrency=concurrency,
        holder=holder,
        max_runtime=max_runtime,
        min_sync_interval=min_sync_interval,
        out_dir=out_dir if sink_url is None else None,
        sink_url=sink_url,
        progress_interval=60,
    )


@dataclass
class WorkerRun:
    """What one in-process run printed and returned."""

    report: RunReport
    lines: list[dict[str, Any]]
    stderr: str

    @property
    def exit_code(self) -> int:
        return self.report.exit_code

    @property
    def users(self) -> dict[str, dict[str, Any]]:
        return {line["user_id"]: line for line in self.lines if "user_id" in line}

    @property
    def summary(self) -> dict[str, Any]:
        return self.lines[-1]

    def outcome(self, user_id: str) -> str:
        return str(self.users[user_id]["outcome"])


def run_worker(
    config: WorkerConfig,
    *,
    control: RunControl | None = None,
    client: AuthClient | None = None,
    sink: Sink | None = None,
) -> WorkerRun:
    out, err = io.StringIO(), io.StringIO()
    report = run(config, out=out, err=err, control=control, client=client, sink=sink)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    # Every user line has exactly the documented keys; the last line is the summary.
    for line in lines[:-1]:
        assert set(line) == {"user_id", "outcome", "items", "refreshed", "seconds"}
    assert set(lines[-1]) == {"summary", "users", "seconds"}
    assert lines[-1]["users"] == len(lines) - 1
    return WorkerRun(report, lines, err.getvalue())


def status(service: Replica, user_id: str) -> pb.SessionStatus:
    answer = service.call("GetStatus", pb.GetStatusRequest(user_id=user_id))
    return cast(pb.SessionStatus, answer.status)


def stored_row(database_url: str, user_id: str) -> GarminAuthenticationState:
    engine = create_engine_for(database_url)
    try:
        with Session(engine) as session:
            row = session.scalars(
                select(GarminAuthenticationState).where(
                    GarminAuthenticationState.user_id == user_id
                )
            ).one()
            session.expunge(row)
            return row
    finally:
        engine.dispose()


def stored_tokens(database_url: str, keyring: Keyring, user_id: str) -> GarminTokens | None:
    row = stored_row(database_url, user_id)
    blob = row.session_ciphertext
    return (
        None if blob is None else SecretBox(keyring).open_tokens(user_id, row.session_version, blob)
    )


def activity_files(out_dir: Path, user_id: str) -> list[str]:
    folder = out_dir / user_id / "activities"
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def summaries(out_dir: Path, user_id: str) -> dict[int, dict[str, Any]]:
    folder = out_dir / user_id / "activities"
    return {
        int(path.stem): json.loads(path.read_text(encoding="utf-8"))
        for path in folder.glob("*.json")
    }


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- A sink that records what the worker did --------------------------------------------


@dataclass(frozen=True)
class SinkEvent:
    """One thing a user sink did: claim, write (written or identical), refused, commit, close."""

    kind: str
    user_id: str
    fencing_token: int
    at: float
    activity_id: int | None = None
    written: bool = False


@dataclass
class RecordingSink:
    """Wraps a real sink; records every event and can run a hook after each summary write
    (the hook runs in the worker's thread, which lets a test act "mid-run")."""

    inner: Sink
    events: list[SinkEvent] = field(default_factory=list)
    after_write: Callable[[SinkEvent], None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0
    max_in_flight: int = 0

    def check(self) -> None:
        self.inner.check()

    def close(self) -> None:
        self.inner.close()

    def record(self, event: SinkEvent) -> None:
        with self.lock:
            self.events.append(event)
            if event.kind == "claim":
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            elif event.kind == "close":
                self.in_flight -= 1

    def for_user(self, user_id: str, fencing_token: int) -> UserSink:
        try:
            inner = self.inner.for_user(user_id, fencing_token)
        except Exception:
            self.record(SinkEvent("refused", user_id, fencing_token, time.monotonic()))
            raise
        self.record(SinkEvent("claim", user_id, fencing_token, time.monotonic()))
        return _RecordingUserSink(self, inner, user_id, fencing_token)

    def of(self, kind: str, user_id: str | None = None) -> list[SinkEvent]:
        with self.lock:
            return [e for e in self.events if e.kind == kind and user_id in (None, e.user_id)]


@dataclass
class _RecordingUserSink:
    parent: RecordingSink
    inner: UserSink
    user_id: str
    token: int

    def _event(self, kind: str, activity_id: int | None = None, written: bool = False) -> SinkEvent:
        return SinkEvent(kind, self.user_id, self.token, time.monotonic(), activity_id, written)

    def has_file(self, activity_id: int) -> bool:
        return self.inner.has_file(activity_id)

    def write_file(self, activity_id: int, content: bytes) -> bool:
        try:
            written = self.inner.write_file(activity_id, content)
        except Exception:
            self.parent.record(self._event("refused", activity_id))
            raise
        self.parent.record(self._event("file", activity_id, written))
        return written

    def write_summary(self, activity: Activity) -> bool:
        return self.write_summaries([activity])[0]

    def write_summaries(self, activities: Sequence[Activity]) -> list[bool]:
        try:
            written = self.inner.write_summaries(activities)
        except Exception:
            for activity in activities:
                self.parent.record(self._event("refused", activity.activity_id))
            raise
        for activity, wrote in zip(activities, written, strict=True):
            event = self._event("write", activity.activity_id, wrote)
            self.parent.record(event)
            if self.parent.after_write is not None:
                self.parent.after_write(event)
        return written

    def commit(self) -> None:
        self.inner.commit()
        self.parent.record(self._event("commit"))

    def close(self) -> None:
        self.parent.record(self._event("close"))
        self.inner.close()


# --- Running the console script -------------------------------------------------------


def worker_env(target: str, garmin: GarminEmulator, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GARMIN_SYNC_", "GARMIN_AUTH_"))
    }
    env.update(
        GARMIN_SYNC_AUTH_TARGET=target,
        GARMIN_SYNC_AUTH_TOKEN=WORKER_TOKEN,
        GARMIN_SYNC_UPSTREAM_URL=garmin.url,
        GARMIN_SYNC_UPSTREAM_TIMEOUT="2",
        GARMIN_SYNC_UPSTREAM_RETRIES="2",
    )
    env.update(extra)
    return env


def utc(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


def run_expiring_mid_run(
    config: WorkerConfig, garmin: GarminEmulator, out_dir: Path, email: str
) -> tuple[WorkerRun, list[str]]:
    """run_recorded, writing to `out_dir`; after the worker's first write Garmin considers
    `email`'s access token expired (the service does not)."""
    sink = RecordingSink(DirectorySink(out_dir))
    writes: list[object] = []

    def expire_after_the_first_write(event: object) -> None:
        writes.append(event)
        if len(writes) == 1:
            garmin.expire_access_tokens(email)

    sink.after_write = expire_after_the_first_write
    return run_recorded(config, sink=sink)


@dataclass
class RevokedRun:
    """A worker run during which Garmin revoked the user's account."""

    email: str
    run: WorkerRun
    # The holder calls the worker made that refresh or end a lease, in order.
    calls: list[str]


def run_revoked_mid_run(
    service: Replica, garmin: GarminEmulator, out_dir: Path, user_id: str
) -> RevokedRun:
    """Connect `user_id` with three activities, revoke the account at Garmin right after the
    worker's first write, and run the worker for that user alone, one item per page."""
    email = connect(service, garmin, user_id, activities=3)
    config = make_config(service.target, garmin, out_dir, users=(user_id,), page_size=1)
    sink = RecordingSink(DirectorySink(out_dir))
    sink.after_write = lambda _event: garmin.revoke_tokens(email)  # mid-run
    result, calls = run_recorded(config, sink=sink)
    return RevokedRun(email, result, calls)


def run_recorded(config: WorkerConfig, *, sink: Sink | None = None) -> tuple[WorkerRun, list[str]]:
    """run_worker with the real client, noting the holder calls it made, in order."""
    client = RecordingClient(config.auth)
    client.calls = []
    try:
        return run_worker(config, client=client, sink=sink), client.calls
    finally:
        client.close()
