"""Prometheus metrics of one replica, served on their own HTTP port (GARMIN_AUTH_METRICS_LISTEN).

Every replica (Application) has its own CollectorRegistry, so several servers in one process
(the tests) never share or collide on a metric.

RPCs, with go-grpc-prometheus's names and labels so the usual gRPC dashboards work:
  grpc_server_started_total{grpc_type, grpc_service, grpc_method}
  grpc_server_handled_total{grpc_type, grpc_service, grpc_method, grpc_code}
  grpc_server_handling_seconds{grpc_type, grpc_service, grpc_method} (histogram)
recorded by auth_service.api.interceptor for GarminAuthService and for the health service's
unary Check. grpc_code is the status code as go-grpc-prometheus names it ("OK",
"InvalidArgument", "Unavailable", ...), so existing dashboards and alerts match.

The service's own work:
  garmin_auth_lease_grants_total{grpc_method}     LeaseSession / LeaseNextSession that granted
  garmin_auth_lease_takeovers_total               LeaseSession grants that replaced an expired,
                                                  never released lease
  garmin_auth_lease_losses_total{grpc_method}     answers LEASE_LOST
  garmin_auth_upstream_requests_total{endpoint, outcome}
  garmin_auth_upstream_request_seconds{endpoint}  (histogram)
  garmin_auth_sessions{state}                     read from the database at scrape time
  garmin_auth_leases_live                         ditto
  garmin_auth_leases_expired                      leases that expired without being released
  garmin_auth_mfa_challenges_pending              ditto
  garmin_auth_database_metrics_up                 1 when the gauges above could be read
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIServer

import grpc
import requests
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import ColumnElement, Engine, and_, case, func, select
from sqlalchemy.exc import SQLAlchemyError
from urllib3.exceptions import TimeoutError as Urllib3TimeoutError

from auth_service.clock import Clock
from auth_service.config import MetricsSettings
from auth_service.domain.events import service_events
from auth_service.domain.models import SessionState
from auth_service.storage.database import SQLITE_BEGIN_OPTION
from auth_service.storage.models import GarminAuthenticationState, GarminMfaChallenge

log = logging.getLogger(__name__)

UNARY = "unary"


# Every status code, so dashboards see zero series for each method before the first error
# (go-grpc-prometheus' InitializeMetrics does the same).
def go_code_name(name: str) -> str:
    """A status code as go-grpc-prometheus labels it (Go's codes.Code.String()):
    INVALID_ARGUMENT -> InvalidArgument, CANCELLED -> Canceled, OK -> OK."""
    if name == "OK":
        return name
    if name == "CANCELLED":
        return "Canceled"
    return "".join(word.capitalize() for word in name.split("_"))


ALL_CODES = tuple(go_code_name(code.name) for code in grpc.StatusCode)
# Garmin's answers take from tens of milliseconds to seconds (login, timeouts at 10 s).
UPSTREAM_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServiceMetrics:
    """The metrics of one replica. Implements auth_service.domain.events.ServiceEvents."""

    def __init__(self, engine: Engine, clock: Clock, settings: MetricsSettings) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._standard_collectors()
        rpc_labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter(
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            rpc_labels,
            registry=self.registry,
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            [*rpc_labels, "grpc_code"],
            registry=self.registry,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            rpc_labels,
            registry=self.registry,
        )
        self.grants = Counter(
            "garmin_auth_lease_grants_total",
            "Leases granted (LeaseSession, or LeaseNextSession that found a due session).",
            ["grpc_method"],
            registry=self.registry,
        )
        self.takeovers = Counter(
            "garmin_auth_lease_takeovers_total",
            "LeaseSession grants that replaced a lease which had expired without being "
            "released (its holder stalled or died).",
            registry=self.registry,
        )
        self.losses = Counter(
            "garmin_auth_lease_losses_total",
            "Calls answered LEASE_LOST (the holder's lease had expired, was taken over, "
            "released or ended by a delete or login).",
            ["grpc_method"],
            registry=self.registry,
        )
        self.upstream_requests = Counter(
            "garmin_auth_upstream_requests_total",
            "Requests to Garmin by endpoint (path template) and outcome (2xx, 3xx, 4xx, 429, "
            "5xx, timeout, error).",
            ["endpoint", "outcome"],
            registry=self.registry,
        )
        self.upstream_seconds = Histogram(
            "garmin_auth_upstream_request_seconds",
            "Latency of requests to Garmin (including urllib3's retries of a GET).",
            ["endpoint"],
            buckets=UPSTREAM_BUCKETS,
            registry=self.registry,
        )
        for method in ("LeaseSession", "LeaseNextSession"):
            self.grants.labels(method)
        self.database = DatabaseCollector(engine, clock, settings.database_cache_seconds)
        self.registry.register(self.database)

    def _standard_collectors(self) -> None:
        # What the default registry would show: process memory, CPU and file descriptors,
        # Python version, garbage collection.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def initialize_rpcs(self, service: str, methods: Iterable[str]) -> None:
        """Create the zero series of every method and code of `service`."""
        for method in methods:
            self.started.labels(UNARY, service, method)
            self.handling.labels(UNARY, service, method)
            for code in ALL_CODES:
                self.handled.labels(UNARY, service, method, code)

    # --- recorded by the interceptor ------------------------------------------------------

    def rpc_started(self, service: str, method: str) -> None:
        self.started.labels(UNARY, service, method).inc()

    def rpc_handled(self, service: str, method: str, code: str, seconds: float) -> None:
        self.handled.labels(UNARY, service, method, go_code_name(code)).inc()
        self.handling.labels(UNARY, service, method).observe(seconds)

    def lease_granted(self, method: str) -> None:
        self.grants.labels(method).inc()

    def lease_lost(self, method: str) -> None:
        self.losses.labels(method).inc()

    # --- auth_service.domain.events.ServiceEvents ----------------------------------------

    def lease_taken_over(self) -> None:
        self.takeovers.inc()

    def upstream_call(self, endpoint: str, outcome: str, seconds: float) -> None:
        self.upstream_requests.labels(endpoint, outcome).inc()
        self.upstream_seconds.labels(endpoint).observe(seconds)


# --- gauges read from the database ------------------------------------------------------


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


@dataclass(frozen=True)
class _Figures:
    sessions: dict[SessionState, int]
    leases_live: int
    leases_expired: int
    mfa_pending: int


class DatabaseCollector(Collector):
    """Sessions by state, leases and pending MFA challenges, counted at scrape time.

    Three cheap aggregate queries, cached for `cache_seconds` so that frequent scrapes (or
    several Prometheus servers) do not turn into load on the database. When the database
    does not answer, the gauges are left out rather than reported stale, and
    garmin_auth_database_metrics_up says 0.
    """

    def __init__(self, engine: Engine, clock: Clock, cache_seconds: float) -> None:
        # A read needs no SQLite write lock.
        self._engine = engine.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._cached: tuple[float, _Figures | None] | None = None
        self._was_up = True

    def describe(self) -> Iterable[Metric]:
        # Names only: registering must not query the database.
        return self._families(None, describe=True)

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self._cache_seconds:
                self._cached = (now, self._read())
            figures = self._cached[1]
        return self._families(figures)

    def _read(self) -> _Figures | None:
        state = GarminAuthenticationState
        now: datetime = self._clock.now()
        try:
            with self._engine.connect() as connection:
                sessions = dict(
                    connection.execute(
                        select(state.state, func.count()).group_by(state.state)
                    ).all()
                )
                live, expired = connection.execute(
                    select(
                        _count_if(
                            and_(
                                state.state == SessionState.ACTIVE,
                                state.lease_expires_at > now,
                            )
                        ),
                        _count_if(state.lease_expires_at <= now),
                    ).where(state.lease_id.is_not(None))
                ).one()
                pending = connection.execute(
                    select(func.count())
                    .select_from(GarminMfaChallenge)
                    .where(GarminMfaChallenge.expires_at > now)
                ).scalar_one()
        except (SQLAlchemyError, OSError) as exc:
            if self._was_up:
                # Only the type: driver messages can echo connection parameters.
                log.warning("metrics: database unreadable (%s)", type(exc).__name__)
            self._was_up = False
            return None
        self._was_up = True
        return _Figures(
            sessions={SessionState(key): int(value) for key, value in sessions.items()},
            leases_live=int(live),
            leases_expired=int(expired),
            mfa_pending=int(pending),
        )

    @staticmethod
    def _families(figures: _Figures | None, *, describe: bool = False) -> list[Metric]:
        up = GaugeMetricFamily(
            "garmin_auth_database_metrics_up",
            "1 when the last read of the database gauges succeeded.",
        )
        if not describe:
            up.add_metric([], 0 if figures is None else 1)
        families: list[Metric] = [up]
        sessions = GaugeMetricFamily(
            "garmin_auth_sessions", "Stored Garmin sessions by state.", labels=["state"]
        )
        live = GaugeMetricFamily(
            "garmin_auth_leases_live", "Leases held right now (not expired, session ACTIVE)."
        )
        expired = GaugeMetricFamily(
            "garmin_auth_leases_expired",
            "Leases that expired without being released or ended, not yet taken over.",
        )
        pending = GaugeMetricFamily(
            "garmin_auth_mfa_challenges_pending", "MFA challenges waiting for their code."
        )
        if figures is not None:
            for session_state in SessionState:
                sessions.add_metric([session_state.value], figures.sessions.get(session_state, 0))
            live.add_metric([], figures.leases_live)
            expired.add_metric([], figures.leases_expired)
            pending.add_metric([], figures.mfa_pending)
        families.extend([sessions, live, expired, pending])
        return families


# --- calls to Garmin -------------------------------------------------------------------

# A path segment that identifies something (a number, a UUID or long hex id, an e-mail, an
# over-long token) becomes "{id}", so the endpoint label never carries a user's identifier
# and its values stay few.
_IDENTIFYING_SEGMENT = re.compile(r"^(\d+|[0-9A-Fa-f-]{16,}|[^/]*@[^/]*|[^/]{48,})$")


def endpoint_template(url: str) -> str:
    """The path of `url` with identifying segments replaced, never its query."""
    path = urlsplit(url).path or "/"
    return "/".join(
        "{id}" if _IDENTIFYING_SEGMENT.match(segment) else segment for segment in path.split("/")
    )


def _status_outcome(status: int) -> str:
    # 429 is Garmin's answer to most fresh logins since March 2026: worth its own series.
    return "429" if status == 429 else f"{status // 100}xx"  # noqa: PLR2004


SendT = TypeVar("SendT", bound=Callable[..., requests.Response])


def observe_upstream_send(send: SendT) -> SendT:
    """Decorates requests' HTTPAdapter.send: each request to Garmin is reported to the
    listener of the RPC in progress (auth_service.domain.events), if any."""

    @functools.wraps(send)
    def observed(self: Any, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        outcome = "error"
        try:
            response = send(self, request, *args, **kwargs)
        except (requests.Timeout, Urllib3TimeoutError):
            outcome = "timeout"
            raise
        else:
            outcome = _status_outcome(response.status_code)
            return response
        finally:
            service_events().upstream_call(
                endpoint_template(request.url or ""), outcome, time.perf_counter() - started
            )

    return cast(SendT, observed)


# --- the HTTP endpoint -----------------------------------------------------------------


@dataclass
class MetricsEndpoint:
    """prometheus_client's HTTP server on its own thread."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_metrics_endpoint(listen: str, registry: CollectorRegistry) -> MetricsEndpoint:
    """Serve /metrics of `registry` on `listen` (host:port; [::]:port for IPv6)."""
    host, _, port = listen.rpartition(":")
    server, thread = start_http_server(int(port), addr=host.strip("[]"), registry=registry)
    return MetricsEndpoint(server, thread)
