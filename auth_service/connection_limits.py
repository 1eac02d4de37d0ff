"""What one client may hold of a replica: streams per connection, how long a connection
lives idle or at all, and the thread pools health and reflection get apart from the RPCs'.
Why each limit exists: auth_service.server's docstring and docs/SECURITY.md ("Serving")."""

from __future__ import annotations

from concurrent import futures

from auth_service.api.handlers import Pools, StreamGate
from auth_service.config import Settings

# Health on the main port (kept for clients that check it there; probes use the health
# listener): a few threads of its own, so idle health calls cannot take the RPC threads.
HEALTH_THREADS = 4
# Concurrent reflection streams (each holds a thread while its client idles); more are
# answered RESOURCE_EXHAUSTED TOO_MANY_STREAMS at once.
REFLECTION_STREAMS = 8
# A reflection stream that sends no request for this long is cancelled (grpcurl sends its
# requests back to back and closes the stream at once).
REFLECTION_IDLE_SECONDS = 30.0
# Streams one connection may carry at a time. A worker process multiplexes its threads over
# one channel; far more than any of ours needs, far fewer than gRPC's unlimited default.
MAX_STREAMS_PER_CONNECTION = 64
# A connection without a call for this long is closed (clients reconnect transparently).
MAX_CONNECTION_IDLE_MS = 180_000
# Calls still running when a connection reaches its maximum age get this long to finish:
# more than our longest RPC (a grant that waits out another replica's refresh claim, about
# 70 s with the default Garmin timeouts). It also bounds how long any idle stream can live
# (GARMIN_AUTH_MAX_CONNECTION_AGE + this).
MAX_CONNECTION_AGE_GRACE_MS = 120_000


def new_pools() -> Pools:
    return Pools(
        health=futures.ThreadPoolExecutor(HEALTH_THREADS, thread_name_prefix="health"),
        reflection=futures.ThreadPoolExecutor(REFLECTION_STREAMS, thread_name_prefix="reflection"),
        reflection_gate=StreamGate(REFLECTION_STREAMS),
        reflection_idle_seconds=REFLECTION_IDLE_SECONDS,
    )


def server_options(settings: Settings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
        ("grpc.max_connection_idle_ms", MAX_CONNECTION_IDLE_MS),
        # gRPC adds +-10% jitter, so replicas started together do not drop every
        # connection at once; a Service then spreads the reconnecting workers over replicas.
        ("grpc.max_connection_age_ms", int(settings.serving.max_connection_age_seconds * 1000)),
        ("grpc.max_connection_age_grace_ms", MAX_CONNECTION_AGE_GRACE_MS),
    ]
