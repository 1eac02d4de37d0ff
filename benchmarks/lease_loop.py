"""Sync workers leasing in a loop, in a spawned process, until told to stop: what a fleet of
workers does to the service while something else (a refresh storm) happens.

`in_flight` callers, spread over the given service addresses (one HTTP/2 connection per
caller), each call LeaseNextSession(min_sync_interval = 0: every session is due, the least
recently synced first) and then ReleaseLease(synced_through = now), closed loop; or, with
`rate` (cycles per second, all callers together), open loop: caller i starts its cycles on a
fixed schedule (one every in_flight / rate seconds, staggered), and a late one starts at once
without catching up. Every call's end (wall clock, so the parent can cut out a window) and
latency is kept.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from types import TracebackType
from typing import Self

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_auth.v1 import garmin_auth_pb2_grpc as pb_grpc

CALL_TIMEOUT_SECONDS = 120.0
LEASE_TTL_SECONDS = 60
NOTHING_DUE_PAUSE_SECONDS = 0.05
START_TIMEOUT_SECONDS = 30.0


@dataclass
class LoopResult:
    """Per method, (wall-clock end, latency in ms) of every completed call; errors by kind."""

    calls: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)

    def latencies_ms(self, method: str, start: float, end: float) -> list[float]:
        """Latencies of `method` calls that ended inside [start, end] (wall clock)."""
        return [ms for ended, ms in self.calls.get(method, []) if start <= ended <= end]


async def _caller(
    target: str,
    metadata: tuple[tuple[str, str], ...],
    stop: Event,
    result: LoopResult,
    schedule: tuple[float, float] | None = None,
) -> None:
    """`schedule` = (first start, period) on the perf_counter clock: open loop."""
    ttl = duration_pb2.Duration(seconds=LEASE_TTL_SECONDS)
    due = duration_pb2.Duration(seconds=0)
    request = pb.LeaseNextSessionRequest(holder="bench-storm", ttl=ttl, min_sync_interval=due)
    async with grpc.aio.insecure_channel(
        target, options=[("grpc.use_local_subchannel_pool", 1)]
    ) as channel:
        stub = pb_grpc.GarminAuthServiceStub(channel)
        next_start = schedule[0] if schedule else 0.0
        while not stop.is_set():
            if schedule is not None:
                await asyncio.sleep(max(next_start - time.perf_counter(), 0.0))
                next_start = max(next_start + schedule[1], time.perf_counter())
            started = time.perf_counter()
            try:
                answer = await stub.LeaseNextSession(
                    request, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS
                )
            except grpc.aio.AioRpcError as exc:
                result.errors[f"LeaseNextSession {exc.code().name}"] += 1
                continue
            _record(result, "LeaseNextSession", started)
            if not answer.HasField("lease"):
                await asyncio.sleep(NOTHING_DUE_PAUSE_SECONDS)
                continue
            synced = timestamp_pb2.Timestamp()
            synced.FromDatetime(datetime.now(UTC))
            started = time.perf_counter()
            try:
                await stub.ReleaseLease(
                    pb.ReleaseLeaseRequest(lease_id=answer.lease.lease_id, synced_through=synced),
                    metadata=metadata,
                    timeout=CALL_TIMEOUT_SECONDS,
                )
            except grpc.aio.AioRpcError as exc:
                result.errors[f"ReleaseLease {exc.code().name}"] += 1
                continue
            _record(result, "ReleaseLease", started)


def _record(result: LoopResult, method: str, started: float) -> None:
    latency_ms = (time.perf_counter() - started) * 1000
    result.calls.setdefault(method, []).append((time.time(), latency_ms))


async def _drive(
    targets: Sequence[str],
    metadata: tuple[tuple[str, str], ...],
    in_flight: int,
    stop: Event,
    rate: float | None = None,
) -> LoopResult:
    result = LoopResult()
    first, period = time.perf_counter() + 0.5, in_flight / rate if rate else 0.0
    await asyncio.gather(
        *(
            _caller(
                targets[i % len(targets)],
                metadata,
                stop,
                result,
                (first + period * i / in_flight, period) if rate else None,
            )
            for i in range(in_flight)
        )
    )
    return result


def _child(
    targets: Sequence[str],
    metadata: tuple[tuple[str, str], ...],
    in_flight: int,
    stop: Event,
    pipe: Connection,
    rate: float | None = None,
) -> None:
    try:
        pipe.send(("started", None))
        pipe.send(("result", asyncio.run(_drive(targets, metadata, in_flight, stop, rate))))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        pipe.close()


class LeaseLoop:
    """The looping workers, from `with` until `stop()` (which returns what they measured)."""

    def __init__(
        self,
        targets: Sequence[str],
        metadata: tuple[tuple[str, str], ...],
        in_flight: int,
        rate: float | None = None,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._pipe, child_end = context.Pipe()
        self._process = context.Process(
            target=_child,
            args=(list(targets), metadata, in_flight, self._stop, child_end, rate),
            daemon=True,
        )
        self._child_end = child_end

    def __enter__(self) -> Self:
        self._process.start()
        self._child_end.close()
        if not self._pipe.poll(START_TIMEOUT_SECONDS) or self._pipe.recv()[0] != "started":
            raise RuntimeError("the lease loop did not start")
        return self

    def stop(self) -> LoopResult:
        self._stop.set()
        if not self._pipe.poll(CALL_TIMEOUT_SECONDS + 10):
            raise RuntimeError("the lease loop did not stop in time")
        kind, payload = self._pipe.recv()
        if kind != "result":
            raise RuntimeError(f"the lease loop failed: {payload}")
        result: LoopResult = payload
        return result

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._process.join(CALL_TIMEOUT_SECONDS)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._pipe.close()
