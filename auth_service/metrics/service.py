"""ServiceMetrics: one replica's registry and its counters (RPCs with go-grpc-prometheus's
names and labels, leases, requests to Garmin); the package docstring lists every metric."""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.protobuf.descriptor import MethodDescriptor
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from sqlalchemy import Engine

from auth_service.config import MetricsSettings
from auth_service.domain.clock import Clock
from auth_service.domain.events import REFRESH_OUTCOMES, SUPPRESSION_REASONS, WAIT_OUTCOMES
from auth_service.domain.garmin_limits import GarminEndpoint
from auth_service.domain.models import SessionKind
from auth_service.metrics.database import DatabaseCollector

UNARY = "unary"


def grpc_type(method: MethodDescriptor) -> str:
    """The grpc_type label go-grpc-prometheus gives a method of this kind."""
    if method.client_streaming:
        return "bidi_stream" if method.server_streaming else "client_stream"
    return "server_stream" if method.server_streaming else UNARY


def go_code_name(name: str) -> str:
    """A status code as go-grpc-prometheus labels it (Go's codes.Code.String()):
    INVALID_ARGUMENT -> InvalidArgument, CANCELLED -> Canceled, OK -> OK."""
    if name == "OK":
        return name
    if name == "CANCELLED":
        return "Canceled"
    return "".join(word.capitalize() for word in name.split("_"))


# Garmin's answers take from tens of milliseconds to seconds (login, timeouts at 10 s).
UPSTREAM_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A commit normally lands in milliseconds; a database restart keeps pairs in memory for
# seconds to minutes.
UNSTORED_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0)


class ServiceMetrics:
    """The metrics of one replica. Implements auth_service.domain.events.ServiceEvents and
    RefreshEvents."""

    def __init__(self, engine: Engine, clock: Clock, settings: MetricsSettings) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # The RPC series initialize_rpcs created, by their labels (the code by its gRPC name).
        self._started_of: dict[tuple[str, str], Counter] = {}
        self._handling_of: dict[tuple[str, str], Histogram] = {}
        self._handled_of: dict[tuple[str, str, str], Counter] = {}
        self._type_of: dict[tuple[str, str], str] = {}
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
            "LeaseSession and LeaseNextSession grants that replaced a lease which had expired "
            "without being "
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
            "Latency of requests to Garmin (including garmin_client's retries of a GET).",
            ["endpoint"],
            buckets=UPSTREAM_BUCKETS,
            registry=self.registry,
        )
        for method in ("LeaseSession", "LeaseNextSession"):
            self.grants.labels(method)
        self._refresh_metrics()
        self.database = DatabaseCollector(engine, clock, settings.database_cache_seconds)
        self.registry.register(self.database)

    def _refresh_metrics(self) -> None:
        self.refreshes = Counter(
            "garmin_auth_refreshes_total",
            "Session refreshes this replica claimed and sent to Garmin, by session kind and "
            "outcome (rotated, rejected, superseded, rate_limited, unavailable, error).",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.refresh_seconds = Histogram(
            "garmin_auth_refresh_seconds",
            "Time Garmin took to answer a refresh this replica claimed.",
            ["kind"],
            buckets=UPSTREAM_BUCKETS,
            registry=self.registry,
        )
        self.refresh_waits = Counter(
            "garmin_auth_refresh_waits_total",
            "Refreshes that found another replica's claim and waited, by how the wait ended "
            "(rotated: its tokens were used; released: its refresh failed; timeout).",
            ["outcome"],
            registry=self.registry,
        )
        self.unstored = Histogram(
            "garmin_auth_rotated_pair_unstored_seconds",
            "How long a token pair Garmin issued lived only in this replica's memory before "
            "its commit landed (a crash within it loses a DI session).",
            buckets=UNSTORED_BUCKETS,
            registry=self.registry,
        )
        for kind in SessionKind:
            self.refresh_seconds.labels(kind.value)
            for outcome in REFRESH_OUTCOMES:
                self.refreshes.labels(kind.value, outcome)
        for outcome in WAIT_OUTCOMES:
            self.refresh_waits.labels(outcome)
        self.suppressed = Counter(
            "garmin_auth_garmin_calls_suppressed_total",
            "Calls to Garmin the service answered itself (GARMIN_RATE_LIMITED) because the "
            "account waits out a 429 (account_cooldown) or the endpoint's breaker is open "
            "(breaker_open), by endpoint.",
            ["endpoint", "reason"],
            registry=self.registry,
        )
        self.rate_limited_answers = Counter(
            "garmin_auth_garmin_rate_limited_total",
            "429s Garmin answered this replica, by endpoint, and how many of them opened the "
            "endpoint's breaker (opened=true).",
            ["endpoint", "opened"],
            registry=self.registry,
        )
        for endpoint in GarminEndpoint:
            for reason in SUPPRESSION_REASONS:
                self.suppressed.labels(endpoint.value, reason)
            for opened in ("true", "false"):
                self.rate_limited_answers.labels(endpoint.value, opened)

    def _standard_collectors(self) -> None:
        # What the default registry would show: process memory, CPU and file descriptors,
        # Python version, garbage collection.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def initialize_rpcs(self, service: str, methods: Mapping[str, MethodDescriptor]) -> None:
        """Create the zero series of every method and code of `service` (so dashboards see
        them before the first error, as go-grpc-prometheus' InitializeMetrics does), and keep
        them at hand: `labels()` takes the metric's lock and builds its key on every call,
        which the interceptor would pay three times per RPC. Each method is labelled with its
        kind of call (a server stream's whole life is one observation, never a unary one)."""
        for method, descriptor in methods.items():
            kind = grpc_type(descriptor)
            self._type_of[service, method] = kind
            self._started_of[service, method] = self.started.labels(kind, service, method)
            self._handling_of[service, method] = self.handling.labels(kind, service, method)
            for code in grpc.StatusCode:
                child = self.handled.labels(kind, service, method, go_code_name(code.name))
                self._handled_of[service, method, code.name] = child

    # --- recorded by the interceptor ------------------------------------------------------

    def rpc_started(self, service: str, method: str) -> None:
        started = self._started_of.get((service, method))
        if started is None:
            started = self.started.labels(self._kind(service, method), service, method)
        started.inc()

    def rpc_handled(self, service: str, method: str, code: str, seconds: float) -> None:
        handled = self._handled_of.get((service, method, code))
        if handled is None:
            kind = self._kind(service, method)
            handled = self.handled.labels(kind, service, method, go_code_name(code))
        handled.inc()
        handling = self._handling_of.get((service, method))
        if handling is None:
            handling = self.handling.labels(self._kind(service, method), service, method)
        handling.observe(seconds)

    def _kind(self, service: str, method: str) -> str:
        # Methods of services never initialized (health, reflection) count as unary.
        return self._type_of.get((service, method), UNARY)

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

    # --- auth_service.domain.events.RefreshEvents ----------------------------------------

    def refresh_finished(self, kind: str, outcome: str, seconds: float) -> None:
        self.refreshes.labels(kind, outcome).inc()
        self.refresh_seconds.labels(kind).observe(seconds)

    def refresh_waited(self, outcome: str) -> None:
        self.refresh_waits.labels(outcome).inc()

    def rotated_pair_unstored(self, seconds: float) -> None:
        self.unstored.observe(seconds)

    # --- auth_service.domain.events.LimitEvents ------------------------------------------

    def call_suppressed(self, endpoint: str, reason: str) -> None:
        self.suppressed.labels(endpoint, reason).inc()

    def rate_limited(self, endpoint: str, breaker_opened: bool) -> None:
        self.rate_limited_answers.labels(endpoint, "true" if breaker_opened else "false").inc()
