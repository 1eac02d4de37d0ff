"""The floor for a lease RPC: the least a gRPC server can do per LeaseSession/ReleaseLease.

    .venv/bin/python -m benchmarks.floor_server --listen HOST:PORT --conninfo "dbname=..."
        [--variant sync|asyncio] [--pool-size 16] [--threads 32]

Same grpcio, same contract (GarminAuthService's LeaseSession and ReleaseLease, so the
benchmarks' load drives it unchanged) and a pool of as many PostgreSQL connections as the
service's (POSTGRES_POOL_SIZE), but nothing else: no authentication, audit, metrics, logs,
ORM or unit of work. Each RPC takes a connection from the pool, runs ONE conditional
`UPDATE ... RETURNING` on the service's own table in autocommit (committed when it returns:
one round trip), hands the connection back and seals a 1 KiB blob with AES-256-GCM (a fresh
nonce each time, the service's cipher). LeaseSession grants the user's row if it is free
(fencing token + 1); ReleaseLease clears it by lease id and records synced_through. What
the service adds on top of this is its own cost, not the machine's or PostgreSQL's.

`sync` serves on a ThreadPoolExecutor of `--threads` workers (the service's model) with a
queue of blocking connections; `asyncio` serves on grpc.aio with psycopg's AsyncConnection in
an asyncio.Queue. The pools are deliberately minimal: a queue of connections opened before
the port is bound (listening means ready), no checks on checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent import futures
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from auth_service.storage.database import POSTGRES_POOL_SIZE
from auth_service.storage.models import GarminAuthenticationState
from benchmarks.harness import (
    REPOSITORY,
    SERVE_TIMEOUT_SECONDS,
    listening_ports,
    stop_process,
)
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_auth.v1 import garmin_auth_pb2_grpc as pb_grpc

TABLE = GarminAuthenticationState.__tablename__
BLOB_BYTES = 1024
NONCE_BYTES = 12
DEFAULT_THREADS = 32  # auth_service.serving_config.RPC_THREADS
DEFAULT_TTL_SECONDS = 60

GRANT = (
    f"UPDATE {TABLE} SET lease_id = %(lease_id)s, lease_holder = %(holder)s, "
    "lease_acquired_at = %(now)s, lease_expires_at = %(expires)s, "
    "fencing_token = fencing_token + 1, updated_at = %(now)s "
    "WHERE user_id = %(user)s AND state = 'ACTIVE' "
    "AND (lease_id IS NULL OR lease_expires_at <= %(now)s) "
    "RETURNING fencing_token"
).encode()
RELEASE = (
    f"UPDATE {TABLE} SET lease_id = NULL, lease_holder = NULL, lease_acquired_at = NULL, "
    "lease_expires_at = NULL, last_synced_at = %(now)s, last_sync_attempt_at = %(now)s, "
    "synced_through = %(synced)s, updated_at = %(now)s "
    "WHERE lease_id = %(lease_id)s AND lease_expires_at > %(now)s RETURNING user_id"
).encode()


class Sealer:
    """AES-256-GCM over a 1 KiB blob, a fresh nonce per call (what sealing a session costs)."""

    def __init__(self) -> None:
        self._cipher = AESGCM(AESGCM.generate_key(bit_length=256))
        self._blob = os.urandom(BLOB_BYTES)

    def seal(self, associated: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._cipher.encrypt(nonce, self._blob, associated)


def grant_params(request: pb.LeaseSessionRequest) -> dict[str, Any]:
    now = datetime.now(UTC)
    ttl = request.ttl.seconds or DEFAULT_TTL_SECONDS
    return {
        "lease_id": secrets.token_urlsafe(24),
        "holder": request.holder,
        "now": now,
        "expires": now + timedelta(seconds=ttl),
        "user": request.user_id,
    }


def release_params(request: pb.ReleaseLeaseRequest) -> dict[str, Any]:
    now = datetime.now(UTC)
    synced = request.synced_through.ToDatetime(UTC) if request.HasField("synced_through") else now
    return {"lease_id": request.lease_id, "now": now, "synced": synced}


def lease_answer(params: dict[str, Any], row: tuple[Any, ...]) -> Any:
    lease = pb.Lease(
        lease_id=params["lease_id"],
        user_id=params["user"],
        holder=params["holder"],
        fencing_token=int(row[0]),
    )
    return pb.LeaseSessionResponse(lease=lease)


# --- sync: the service's model (a thread per call, blocking connections) ---------------


class SyncFloor(pb_grpc.GarminAuthServiceServicer):
    def __init__(self, conninfo: str, pool_size: int) -> None:
        self._pool: queue.Queue[psycopg.Connection[Any]] = queue.Queue()
        for _ in range(pool_size):
            self._pool.put(psycopg.connect(conninfo, autocommit=True))
        self._sealer = Sealer()

    def _one(self, sql: bytes, params: dict[str, Any]) -> tuple[Any, ...] | None:
        connection = self._pool.get()
        try:
            return connection.execute(sql, params).fetchone()
        finally:
            self._pool.put(connection)

    def LeaseSession(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        params = grant_params(request)
        row = self._one(GRANT, params)
        if row is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not free")
        self._sealer.seal(request.user_id.encode())
        return lease_answer(params, row)

    def ReleaseLease(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        row = self._one(RELEASE, release_params(request))
        if row is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "lease lost")
        self._sealer.seal(str(row[0]).encode())
        return pb.ReleaseLeaseResponse()


def serve_sync(listen: str, conninfo: str, pool_size: int, threads: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
    pb_grpc.add_GarminAuthServiceServicer_to_server(SyncFloor(conninfo, pool_size), server)
    server.add_insecure_port(listen)
    server.start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    server.stop(1).wait()


# --- asyncio: grpc.aio with async connections ------------------------------------------


class AsyncFloor(pb_grpc.GarminAuthServiceServicer):
    def __init__(self, connections: Sequence[psycopg.AsyncConnection[Any]]) -> None:
        self._pool: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()
        for connection in connections:
            self._pool.put_nowait(connection)
        self._sealer = Sealer()

    async def _one(self, sql: bytes, params: dict[str, Any]) -> tuple[Any, ...] | None:
        connection = await self._pool.get()
        try:
            cursor = await connection.execute(sql, params)
            return await cursor.fetchone()
        finally:
            self._pool.put_nowait(connection)

    async def LeaseSession(self, request: Any, context: Any) -> Any:  # noqa: N802
        params = grant_params(request)
        row = await self._one(GRANT, params)
        if row is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not free")
            raise AssertionError  # abort raises; this tells the type checker
        self._sealer.seal(request.user_id.encode())
        return lease_answer(params, row)

    async def ReleaseLease(self, request: Any, context: Any) -> Any:  # noqa: N802
        row = await self._one(RELEASE, release_params(request))
        if row is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "lease lost")
            raise AssertionError  # abort raises; this tells the type checker
        self._sealer.seal(str(row[0]).encode())
        return pb.ReleaseLeaseResponse()


async def serve_asyncio(listen: str, conninfo: str, pool_size: int) -> None:
    connections = [
        await psycopg.AsyncConnection.connect(conninfo, autocommit=True) for _ in range(pool_size)
    ]
    server = grpc.aio.server()
    pb_grpc.add_GarminAuthServiceServicer_to_server(AsyncFloor(connections), server)
    server.add_insecure_port(listen)
    await server.start()
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    await stopped.wait()
    await server.stop(1)
    for connection in connections:
        await connection.close()


# --- launching it from a benchmark -----------------------------------------------------


class FloorProcess:
    """This module's server as a separate process (`variant`), listening on `target`."""

    def __init__(self, variant: str, conninfo: str, target: str, log_path: Path) -> None:
        self.variant = variant
        self.conninfo = conninfo
        self.target = target
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the floor server is not started")
        return self._process.pid

    def start(self) -> None:
        command = [sys.executable, "-m", "benchmarks.floor_server", "--listen", self.target]
        command += ["--conninfo", self.conninfo, "--variant", self.variant]
        with self.log_path.open("ab") as log_file:
            self._process = subprocess.Popen(
                command, stdout=log_file, stderr=log_file, cwd=REPOSITORY
            )

    def wait_listening(self, timeout: float = SERVE_TIMEOUT_SECONDS) -> None:
        """Until THIS process listens on the port (several may share it: SO_REUSEPORT)."""
        port = int(self.target.rpartition(":")[2])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"the floor server exited early; see {self.log_path}")
            if port in listening_ports(self.pid):
                return
            time.sleep(0.01)
        raise RuntimeError(f"the floor server did not listen in {timeout} s; see {self.log_path}")

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor_server")
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--conninfo", required=True, help="libpq connection string")
    parser.add_argument("--variant", choices=("sync", "asyncio"), default="sync")
    parser.add_argument("--pool-size", type=int, default=POSTGRES_POOL_SIZE)
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    args = parser.parse_args(argv)
    if args.variant == "sync":
        serve_sync(args.listen, args.conninfo, args.pool_size, args.threads)
    else:
        asyncio.run(serve_asyncio(args.listen, args.conninfo, args.pool_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
