"""Load generators, each in its own spawned process (its own GIL, never the service's).

`run_load(spec, on_start, on_end)` starts the child, calls `on_start` when the measured
window opens (after the warm-up) and `on_end` when it closes, so the parent can read the
service's CPU counters at exactly those instants, and returns what the child measured. The
child keeps its load (and its database connections) going until `on_end` has returned.

Workloads (closed loop: `in_flight` callers, each issuing its next call when the last ends):
- `health`: grpc.health.v1 Check("") on the service.
- `lease_session`: LeaseSession(user) + ReleaseLease(synced_through=now), over distinct users
  taken in turn from a shared counter (N callers never ask for the same user at once).
- `lease_next`: LeaseNextSession(min_sync_interval) + ReleaseLease(synced_through=now). With
  min_sync_interval = 1 h and every seeded session last synced over an hour ago, each user is
  handed out at most once per round (the release marks it synced); a caller that gets "nothing
  due" stops, and the result says the round ran out (`exhausted`).
- `lease_handover`: LeaseNextSession(min_sync_interval) carrying the release (synced_through
  = now) of the caller's previous lease: what `sync_worker --all` sends, one RPC per user.
- `direct_tx` / `direct_autocommit` / `direct_tx_preping`: the repository's own grant and
  release UPDATE statements (captured from SQLAlchemy, harness.capture_lease_statements)
  issued with psycopg from `in_flight` threads, one connection each: inside BEGIN/COMMIT (what
  the service's unit of work does, and what a worker touching the database would do), in
  autocommit (one round trip per statement), and BEGIN/COMMIT after a `SELECT 1` (what
  SQLAlchemy's pool_pre_ping adds to every checkout).
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from typing import Any

import grpc
import psycopg
from google.protobuf import duration_pb2, timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.harness import (
    SENTINEL_EXPIRES,
    SENTINEL_HOLDER,
    SENTINEL_LEASE,
    SENTINEL_NOW,
    SENTINEL_SYNCED,
    SENTINEL_USER,
    CapturedStatement,
    CpuSample,
    user_id,
)
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_auth.v1 import garmin_auth_pb2_grpc as pb_grpc

GRPC_WORKLOADS = ("health", "lease_session", "lease_next", "lease_handover")
DIRECT_WORKLOADS = ("direct_tx", "direct_autocommit", "direct_tx_preping")
CALL_TIMEOUT_SECONDS = 10.0
LEASE_TTL_SECONDS = 60
CHILD_TIMEOUT_MARGIN_SECONDS = 60.0
# One HTTP/2 connection per this many callers (sync workers are separate processes).
CALLERS_PER_CHANNEL = 4


@dataclass(frozen=True)
class LoadSpec:
    """What a load child does. Pickled to the child: plain values only."""

    workload: str
    in_flight: int
    duration: float
    warmup: float
    target: str = ""
    metadata: tuple[tuple[str, str], ...] = ()
    user_count: int = 0
    # Which user the first call takes (lets consecutive runs start where the last stopped).
    first_user: int = 0
    min_sync_interval_seconds: int = 3600
    holder: str = "bench-worker"
    conninfo: str = ""
    grant: CapturedStatement | None = None
    release: CapturedStatement | None = None


@dataclass
class LoadResult:
    """What the child measured inside the window (latencies in milliseconds, per method)."""

    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    client_cpu: float = 0.0
    exhausted: bool = False
    next_user: int = 0

    @property
    def calls(self) -> int:
        return sum(len(values) for values in self.latencies_ms.values())

    @property
    def rate(self) -> float:
        return self.calls / self.elapsed if self.elapsed > 0 else 0.0

    def all_latencies(self) -> list[float]:
        return [value for values in self.latencies_ms.values() for value in values]


class _Window:
    """When the measured window is open; records calls that complete inside it."""

    def __init__(self) -> None:
        self.opened_at: float | None = None
        self.closed_at: float | None = None
        self.stop = False
        self.result = LoadResult()
        self._lock = threading.Lock()

    def record(self, method: str, started: float) -> None:
        finished = time.perf_counter()
        if self.opened_at is None or self.closed_at is not None:
            return
        with self._lock:
            self.result.latencies_ms.setdefault(method, []).append((finished - started) * 1000)

    def error(self, what: str) -> None:
        if self.opened_at is None or self.closed_at is not None:
            return
        with self._lock:
            self.result.errors[what] = self.result.errors.get(what, 0) + 1


def _await_ack(pipe: Connection) -> None:
    """Keep the load (and its connections) going until the parent has read its counters."""
    if pipe.poll(CALL_TIMEOUT_SECONDS):
        pipe.recv()


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


# --- gRPC workloads ----------------------------------------------------------------------


def _rpc_error(exc: grpc.aio.AioRpcError) -> str:
    return f"{exc.code().name}:{(exc.details() or '')[:60]}"


class _GrpcDriver:
    def __init__(self, spec: LoadSpec, window: _Window) -> None:
        self.spec = spec
        self.window = window
        self.users = itertools.count(spec.first_user)
        self.next_user = spec.first_user
        self.ttl = duration_pb2.Duration(seconds=LEASE_TTL_SECONDS)
        self.interval = duration_pb2.Duration(seconds=spec.min_sync_interval_seconds)

    def _user(self) -> str:
        self.next_user = next(self.users) + 1
        return user_id((self.next_user - 1) % self.spec.user_count)

    async def health(self, channel: grpc.aio.Channel) -> None:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="")
        while not self.window.stop:
            started = time.perf_counter()
            try:
                await stub.Check(request, timeout=CALL_TIMEOUT_SECONDS)
                self.window.record("Check", started)
            except grpc.aio.AioRpcError as exc:
                self.window.error("Check " + _rpc_error(exc))

    async def _release(self, stub: pb_grpc.GarminAuthServiceStub, lease_id: str) -> None:
        synced = timestamp_pb2.Timestamp()
        synced.FromDatetime(datetime.now(UTC))
        started = time.perf_counter()
        try:
            await stub.ReleaseLease(
                pb.ReleaseLeaseRequest(lease_id=lease_id, synced_through=synced),
                metadata=self.spec.metadata,
                timeout=CALL_TIMEOUT_SECONDS,
            )
            self.window.record("ReleaseLease", started)
        except grpc.aio.AioRpcError as exc:
            self.window.error("ReleaseLease " + _rpc_error(exc))

    async def lease_session(self, channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.GarminAuthServiceStub(channel)
        while not self.window.stop:
            request = pb.LeaseSessionRequest(
                user_id=self._user(), holder=self.spec.holder, ttl=self.ttl
            )
            started = time.perf_counter()
            try:
                answer = await stub.LeaseSession(
                    request, metadata=self.spec.metadata, timeout=CALL_TIMEOUT_SECONDS
                )
            except grpc.aio.AioRpcError as exc:
                self.window.error("LeaseSession " + _rpc_error(exc))
                continue
            self.window.record("LeaseSession", started)
            await self._release(stub, answer.lease.lease_id)

    async def lease_next(self, channel: grpc.aio.Channel) -> None:
        await self._drain(channel, carry=False)

    async def lease_handover(self, channel: grpc.aio.Channel) -> None:
        await self._drain(channel, carry=True)

    async def _drain(self, channel: grpc.aio.Channel, *, carry: bool) -> None:
        """LeaseNextSession until nothing is due, each lease released by a ReleaseLease of
        its own or (`carry`) by the next LeaseNextSession."""
        stub = pb_grpc.GarminAuthServiceStub(channel)
        previous: str | None = None
        while not self.window.stop:
            request = pb.LeaseNextSessionRequest(
                holder=self.spec.holder, ttl=self.ttl, min_sync_interval=self.interval
            )
            if previous is not None:
                request.release.lease_id = previous
                request.release.synced_through.FromDatetime(datetime.now(UTC))
            started = time.perf_counter()
            try:
                answer = await stub.LeaseNextSession(
                    request, metadata=self.spec.metadata, timeout=CALL_TIMEOUT_SECONDS
                )
            except grpc.aio.AioRpcError as exc:
                self.window.error("LeaseNextSession " + _rpc_error(exc))
                previous = None
                continue
            if not answer.HasField("lease"):
                self.window.result.exhausted = True
                return
            self.window.record("LeaseNextSession", started)
            if carry:
                previous = answer.lease.lease_id
            else:
                await self._release(stub, answer.lease.lease_id)
        if previous is not None:
            await self._release(stub, previous)  # after the window: not counted


async def _drive_grpc(spec: LoadSpec, pipe: Connection) -> LoadResult:
    window = _Window()
    driver = _GrpcDriver(spec, window)
    behaviour: Callable[[grpc.aio.Channel], Any] = getattr(driver, spec.workload)
    channel_count = max(1, spec.in_flight // CALLERS_PER_CHANNEL)
    channels = [
        grpc.aio.insecure_channel(spec.target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(channel_count)
    ]
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), CALL_TIMEOUT_SECONDS)
        tasks = [
            asyncio.create_task(behaviour(channels[i % channel_count]))
            for i in range(spec.in_flight)
        ]
        await asyncio.wait(tasks, timeout=spec.warmup)
        window.opened_at = time.perf_counter()
        cpu_before = _cpu()
        pipe.send("start")
        await asyncio.wait(tasks, timeout=spec.duration)
        window.closed_at = time.perf_counter()
        window.result.client_cpu = _cpu() - cpu_before
        pipe.send("end")
        await asyncio.get_running_loop().run_in_executor(None, _await_ack, pipe)
        window.stop = True
        _done, pending = await asyncio.wait(tasks, timeout=CALL_TIMEOUT_SECONDS + 5)
        for task in pending:
            task.cancel()
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise RuntimeError(f"a caller failed: {task.exception()!r}")
    finally:
        for channel in channels:
            await channel.close(None)
    window.result.elapsed = window.closed_at - window.opened_at
    window.result.next_user = driver.next_user
    return window.result


# --- direct psycopg workloads ------------------------------------------------------------


class _DirectDriver:
    def __init__(self, spec: LoadSpec, window: _Window) -> None:
        assert spec.grant is not None
        assert spec.release is not None
        self.spec = spec
        self.window = window
        self.grant: CapturedStatement = spec.grant
        self.release: CapturedStatement = spec.release
        self.users = itertools.count(spec.first_user)
        self.next_user = spec.first_user
        self._lock = threading.Lock()
        self.autocommit = spec.workload == "direct_autocommit"
        self.preping = spec.workload == "direct_tx_preping"
        self.failures: list[BaseException] = []

    def _user(self) -> str:
        with self._lock:
            self.next_user = next(self.users) + 1
            return user_id((self.next_user - 1) % self.spec.user_count)

    def _statement(
        self, connection: psycopg.Connection[Any], statement: CapturedStatement, params: Any
    ) -> tuple[Any, ...] | None:
        if self.preping:
            connection.execute(b"SELECT 1")
        row = connection.execute(statement.sql.encode(), params).fetchone()
        if not self.autocommit:
            connection.commit()
        return row

    def run_connection(self, connection: psycopg.Connection[Any]) -> None:
        try:
            while not self.window.stop:
                now = datetime.now(UTC)
                lease_id = secrets.token_urlsafe(24)
                params = self.grant.bind(
                    {
                        SENTINEL_USER: self._user(),
                        SENTINEL_LEASE: lease_id,
                        SENTINEL_HOLDER: self.spec.holder,
                        SENTINEL_NOW: now,
                        SENTINEL_EXPIRES: now + timedelta(seconds=LEASE_TTL_SECONDS),
                    }
                )
                started = time.perf_counter()
                row = self._statement(connection, self.grant, params)
                if row is None:
                    self.window.error("grant matched no row")
                    continue
                self.window.record("grant", started)
                now = datetime.now(UTC)
                params = self.release.bind(
                    {
                        SENTINEL_LEASE: lease_id,
                        SENTINEL_HOLDER: self.spec.holder,
                        SENTINEL_NOW: now,
                        SENTINEL_SYNCED: now,
                    }
                )
                started = time.perf_counter()
                if self._statement(connection, self.release, params) is None:
                    self.window.error("release matched no row")
                    continue
                self.window.record("release", started)
        except BaseException as exc:  # noqa: BLE001 - handed to the parent thread
            self.failures.append(exc)


def _drive_direct(spec: LoadSpec, pipe: Connection) -> LoadResult:
    window = _Window()
    driver = _DirectDriver(spec, window)
    connections = [
        psycopg.connect(spec.conninfo, autocommit=driver.autocommit) for _ in range(spec.in_flight)
    ]
    try:
        threads = [
            threading.Thread(target=driver.run_connection, args=(connection,), daemon=True)
            for connection in connections
        ]
        for thread in threads:
            thread.start()
        time.sleep(spec.warmup)
        window.opened_at = time.perf_counter()
        cpu_before = _cpu()
        pipe.send("start")
        time.sleep(spec.duration)
        window.closed_at = time.perf_counter()
        window.result.client_cpu = _cpu() - cpu_before
        pipe.send("end")
        _await_ack(pipe)
        window.stop = True
        for thread in threads:
            thread.join(CALL_TIMEOUT_SECONDS)
        if driver.failures:
            raise RuntimeError(f"a direct caller failed: {driver.failures[0]!r}")
    finally:
        for connection in connections:
            connection.close()
    window.result.elapsed = window.closed_at - window.opened_at
    window.result.next_user = driver.next_user
    return window.result


# --- the child process -------------------------------------------------------------------


def _child(spec: LoadSpec, pipe: Connection) -> None:
    try:
        if spec.workload in GRPC_WORKLOADS:
            result = asyncio.run(_drive_grpc(spec, pipe))
        else:
            result = _drive_direct(spec, pipe)
        pipe.send(("result", result))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        pipe.close()


def run_load(
    spec: LoadSpec,
    on_start: Callable[[], None] = lambda: None,
    on_end: Callable[[], None] = lambda: None,
) -> LoadResult:
    """Run `spec` in a spawned process; call on_start/on_end at the window's edges."""
    if spec.workload not in (*GRPC_WORKLOADS, *DIRECT_WORKLOADS):
        raise ValueError(f"unknown workload {spec.workload!r}")
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    process = context.Process(target=_child, args=(spec, child_end), daemon=True)
    process.start()
    child_end.close()
    deadline = time.monotonic() + spec.warmup + spec.duration + CHILD_TIMEOUT_MARGIN_SECONDS
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not parent_end.poll(remaining):
                raise RuntimeError(f"the {spec.workload} load did not finish in time")
            try:
                message = parent_end.recv()
            except EOFError:
                raise RuntimeError(f"the {spec.workload} load process died") from None
            if message == "start":
                on_start()
            elif message == "end":
                on_end()
                parent_end.send("ack")
            elif message[0] == "result":
                result: LoadResult = message[1]
                return result
            else:
                raise RuntimeError(f"the {spec.workload} load failed: {message[1]}")
    finally:
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join(5)
        parent_end.close()


@dataclass(frozen=True)
class Measured:
    """A load result and the CPU every party spent inside its window."""

    result: LoadResult
    cpu: CpuSample

    def per_call_ms(self, seconds: float) -> float:
        calls = self.result.calls
        return seconds / calls * 1000 if calls else float("nan")


def measure(spec: LoadSpec, server_pids: Sequence[int], database_name: str = "") -> Measured:
    """run_load, reading CPU counters (the service's processes, our database's backends, the
    machine) at the window's edges."""
    samples: dict[str, CpuSample] = {}

    def take(edge: str) -> Callable[[], None]:
        return lambda: samples.__setitem__(edge, CpuSample.take(server_pids, database_name))

    result = run_load(spec, take("start"), take("end"))
    return Measured(result, samples["start"].until(samples["end"]))
