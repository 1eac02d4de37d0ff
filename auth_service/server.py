"""Composition root and the running server: health, reflection, TLS, metrics, graceful stop.

How the server stays available to its callers when someone else misbehaves (issue 14): an
anonymous call is refused before it takes a worker thread (auth_service.api.interceptor);
health and reflection have thread pools of their own, reflection streams are capped; every
connection carries a bounded number of streams, is closed when idle and recycled at a
maximum age; and probes go to a separate asyncio health listener (auth_service.health)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field, replace
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from prometheus_client import Gauge
from sqlalchemy import Engine

from auth_service.api.access_log import AccessLog
from auth_service.api.callers import CallerRegistry, CallersFileError
from auth_service.api.handlers import Pools
from auth_service.api.interceptor import ServiceInterceptor
from auth_service.api.reflection import enable_reflection
from auth_service.api.servicer import GarminAuthServicer
from auth_service.config import PREFIX, Settings, redacted_database_url, signin_claim_seconds
from auth_service.connection_limits import new_pools, server_options
from auth_service.domain.change_ports import ChangeSignal
from auth_service.domain.clock import Clock
from auth_service.domain.paging import Pager
from auth_service.domain.ports import GarminUpstream
from auth_service.domain.signin_accounts import ACCOUNT_KEY_LABEL, SignInAccounts
from auth_service.health import (
    EndingHealthServicer,
    HealthBoard,
    HealthListener,
    HealthListenerError,
)
from auth_service.metrics.endpoint import MetricsEndpoint, start_metrics_endpoint
from auth_service.metrics.service import ServiceMetrics
from auth_service.services.periodic import Periodic
from auth_service.services.session_import import TokenParsers
from auth_service.services.use_cases import ChangeStreamPorts, UseCases, build_use_cases
from auth_service.services.webhooks import WebhookDelivery
from auth_service.serving_config import RPC_THREADS, ReflectionMode
from auth_service.storage.change_sequencer import ChangeSequencer
from auth_service.storage.change_signal import LocalChangeSignal, change_signal_for
from auth_service.storage.clock import clock_for
from auth_service.storage.database import create_engine_for, database_is_reachable, session_factory
from auth_service.storage.secrets import SecretBox
from auth_service.storage.unit_of_work import SqlStore
from auth_service.tls import CertificateReloader
from auth_service.upstream.di.garminconnect import tokens_from_garminconnect
from auth_service.upstream.di.provider import DiUpstream
from auth_service.upstream.garth.dumps import tokens_from_garth_dumps
from auth_service.upstream.garth.provider import GarthUpstream
from auth_service.upstream.router import UpstreamRouter
from auth_service.upstream.webhook import HttpWebhookSender
from garmin_auth.v1 import garmin_auth_pb2, garmin_auth_pb2_grpc
from garmin_client.env import ConfigError

log = logging.getLogger(__name__)

SERVICE_NAME = garmin_auth_pb2.DESCRIPTOR.services_by_name["GarminAuthService"].full_name
HEALTH_PROBE_SECONDS = 2.0
# Keep-alive passes of replicas started together drift apart by up to this fraction.
KEEPALIVE_JITTER = 0.2
# Page tokens are signed with keys derived from the encryption keyring under this label.
PAGE_TOKEN_KEY_LABEL = "garmin-auth page tokens v1"  # noqa: S105 - a label, not a secret


@dataclass
class Application:
    """Everything one replica is made of."""

    settings: Settings
    engine: Engine
    use_cases: UseCases
    callers: CallerRegistry
    metrics: ServiceMetrics
    # Numbers the change log's committed entries, and wakes followers (started with the
    # server: an application built for a test starts no thread and opens no connection).
    sequencer: ChangeSequencer
    change_signal: LocalChangeSignal


def change_stream_ports(settings: Settings, signal: ChangeSignal) -> ChangeStreamPorts:
    """WatchSessionEvents' signal and settings; the webhook sender when a URL is set."""
    hooks = settings.webhooks
    sender = (
        None
        if hooks.url is None
        else HttpWebhookSender(hooks.url, hooks.secret, timeout_seconds=hooks.timeout_seconds)
    )
    return ChangeStreamPorts(
        signal=signal, stream=settings.stream, webhooks=hooks, webhook_sender=sender
    )


def load_callers(settings: Settings) -> CallerRegistry:
    """The callers file, loaded; a file that cannot be read or parsed is a bad setting, named
    by its variable as every other one is (the path alone did not say what to fix)."""
    try:
        return CallerRegistry(
            settings.callers_file, allow_unauthenticated=settings.allow_unauthenticated
        )
    except CallersFileError as exc:
        raise ConfigError(PREFIX + "CALLERS_FILE", str(exc)) from None


def build_application(
    settings: Settings,
    *,
    clock: Clock | None = None,
    upstream: GarminUpstream | None = None,
) -> Application:
    # First: a callers file that cannot be loaded stops start-up before anything is opened.
    callers = load_callers(settings)
    engine = create_engine_for(settings.database_url)
    # The database's clock rules every expiry decision, so replicas agree
    # (auth_service.storage.clock). The DI token endpoint's answers carry lifetimes ("expires
    # in"), which it turns into the expiries stored: on that clock too, or a replica whose
    # machine clock runs ahead would store expiries that every replica trusts too long.
    clock = clock or clock_for(engine)
    upstream = upstream or UpstreamRouter(
        garth=GarthUpstream(settings.upstream, clock=clock),
        di=DiUpstream(settings.upstream, settings.di, clock=clock),
        login_flow=settings.login_flow,
    )
    # Two signals: `committed` wakes the sequencer when this replica committed changes, and
    # `signal` wakes the change stream's followers once positions moved (on PostgreSQL also
    # from every other replica, by NOTIFY).
    signal = change_signal_for(engine)
    committed = LocalChangeSignal()
    db = session_factory(engine)
    store = SqlStore(db, SecretBox(settings.keyring), on_changes=committed.wake)
    sequencer = ChangeSequencer(db, committed, signal, settings.stream.poll_seconds)
    pager = Pager(settings.keyring.derived_keys(PAGE_TOKEN_KEY_LABEL))
    metrics = ServiceMetrics(engine, clock, settings.metrics)
    Gauge(
        "garmin_auth_callers_file_invalid",
        "1 while the callers file cannot be read or parsed and every caller is refused.",
        registry=metrics.registry,
    ).set_function(lambda: float(callers.refresh() is not None))
    return Application(
        settings=settings,
        engine=engine,
        use_cases=build_use_cases(
            store,
            clock,
            upstream,
            pager,
            # The sign-in's hold, sized on the upstream calls this replica makes.
            login=replace(
                settings.login,
                signin_claim_seconds=signin_claim_seconds(
                    settings.upstream, settings.di.client_ids
                ),
            ),
            leases=settings.leases,
            refresh=settings.refresh,
            refresh_events=metrics,
            limits=settings.limits,
            limit_events=metrics,
            # Keep-alive's requests to Garmin, outside any RPC, are counted like an RPC's.
            background_events=metrics,
            token_parsers=TokenParsers(
                garth=tokens_from_garth_dumps, garminconnect=tokens_from_garminconnect
            ),
            changes=change_stream_ports(settings, signal),
            # Every replica derives the same key: an account's sign-ins are counted together.
            accounts=SignInAccounts(settings.keyring.derived_keys(ACCOUNT_KEY_LABEL)),
        ),
        callers=callers,
        metrics=metrics,
        sequencer=sequencer,
        change_signal=signal,
    )


@dataclass
class RunningServer:
    """A started gRPC server and the threads that keep its health and its data current."""

    server: grpc.Server
    port: int
    health: HealthBoard
    application: Application
    housekeeper: Periodic
    keepalive: Periodic
    # Webhook delivery passes, when GARMIN_AUTH_WEBHOOK_URL is set.
    webhooks: Periodic | None = None
    # The /metrics HTTP endpoint, when GARMIN_AUTH_METRICS_LISTEN is set.
    metrics_endpoint: MetricsEndpoint | None = None
    # The server's TLS credentials (and what they currently serve), when TLS is on.
    certificates: CertificateReloader | None = None
    # The health-only listener, when GARMIN_AUTH_HEALTH_LISTEN is not off.
    health_listener: HealthListener | None = None
    pools: Pools | None = None
    # Each call's log line, written in batches by its own thread.
    access_log: AccessLog | None = None
    # Ends the watch streams at stop, those parked in gRPC's send included.
    stop_streams: Callable[[], None] | None = None
    _stop_probe: threading.Event = field(default_factory=threading.Event)

    @property
    def health_port(self) -> int | None:
        return None if self.health_listener is None else self.health_listener.port

    @property
    def metrics_port(self) -> int | None:
        return None if self.metrics_endpoint is None else self.metrics_endpoint.port

    def probe_once(self) -> bool:
        """Readiness follows the database; liveness never does (auth_service.health)."""
        serving = database_is_reachable(self.application.engine)
        self.health.set_ready(serving)
        return serving

    def _probe_loop(self) -> None:
        was_serving: bool | None = None
        while not self._stop_probe.wait(HEALTH_PROBE_SECONDS):
            serving = self.probe_once()
            if serving != was_serving:
                log.log(
                    logging.INFO if serving else logging.ERROR,
                    "database %s; readiness %s (liveness stays SERVING)",
                    "reachable" if serving else "unreachable",
                    "SERVING" if serving else "NOT_SERVING",
                )
                was_serving = serving

    def start_probe(self) -> None:
        threading.Thread(target=self._probe_loop, name="health-probe", daemon=True).start()

    def _wait_for_issued_sessions(self) -> None:
        """Past the grace period, the calls whose session Garmin is issuing (a rotation, a
        sign-in) still get to store it: exiting meanwhile loses a pair whose refresh token
        (or ticket) Garmin has already spent."""
        in_flight = self.application.use_cases.issued_in_flight
        # Handlers of calls cancelled at the grace period's end may still run: they ask
        # Garmin for nothing new (ReplicaStopping), so the wait ends.
        in_flight.close()
        if not in_flight.count:
            return
        wait = issued_wait_seconds(self.application.settings)
        log.info("waiting up to %.0fs for %d Garmin session(s) to be stored", wait, in_flight.count)
        if not in_flight.wait_idle(wait):
            log.error(
                "%d Garmin session(s) not stored after %.0fs; stopping anyway (their users may "
                "need to sign in again)",
                in_flight.count,
                wait,
            )

    def stop(self, grace: float | None = None) -> None:
        """Graceful stop: NOT_SERVING first, then let in-flight calls finish within `grace`."""
        self._stop_probe.set()
        self.health.enter_graceful_shutdown()
        grace = self.application.settings.grace_period_seconds if grace is None else grace
        # Watch streams never finish by themselves: end them now (REPLICA_STOPPING), so the
        # grace period is for the unary calls.
        use_cases = self.application.use_cases
        use_cases.session_events.stop()
        if self.stop_streams is not None:
            self.stop_streams()
        # No keep-alive rotation starts from now on (those under way are waited for below):
        # a pass would otherwise go on starting them while the stop waits for them.
        use_cases.keepalive.halt()
        if use_cases.webhooks is not None:
            # Webhooks are no call to finish: the pass ends after its POST in flight.
            use_cases.webhooks.halt()
        self.server.stop(grace).wait()
        self._wait_for_issued_sessions()
        if self.access_log is not None:
            self.access_log.close()
        if self.health_listener is not None:
            self.health_listener.stop(0)
        if self.pools is not None:
            self.pools.health.shutdown(wait=False, cancel_futures=True)
            self.pools.reflection.shutdown(wait=False, cancel_futures=True)
        self.housekeeper.stop()
        self.keepalive.stop()
        if self.webhooks is not None and use_cases.webhooks is not None:
            self.webhooks.stop()
            _release_webhooks(use_cases.webhooks)
        self.application.sequencer.stop()
        use_cases.session_events.signal.close()
        # Scraped until the end, so the last RPCs' figures can still be collected.
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.stop()
        self.application.engine.dispose()


def issued_wait_seconds(settings: Settings) -> float:
    """How long a stop waits, past the grace period, for sessions Garmin is issuing to
    store: one Garmin call at its worst plus a margin for the commit (the refresh claim's
    first part), or an MFA sign-in's calls."""
    return max(settings.refresh.claim_seconds, settings.login.mfa_claim_seconds)


def start_server(
    application: Application,
    listen: str | None = None,
    *,
    extra_handlers: Sequence[grpc.GenericRpcHandler] = (),
) -> RunningServer:
    """Start serving. `extra_handlers` (tests) are served behind the same interceptor, so
    the access table decides who may call them: nobody, unless it lists them."""
    settings = application.settings
    options = server_options(settings)
    # Read before anything listens, so broken TLS files stop start-up with one line.
    certificates = CertificateReloader(settings.tls) if settings.tls is not None else None
    metrics = application.metrics
    metrics.initialize_rpcs(
        SERVICE_NAME,
        garmin_auth_pb2.DESCRIPTOR.services_by_name["GarminAuthService"].methods_by_name,
    )
    pools = new_pools()
    access_log = AccessLog().start()
    reflection = settings.serving.reflection
    # No maximum_concurrent_rpcs: it counts every call, health and refusals included, so
    # idle anonymous health calls could make gRPC refuse authenticated callers. Refusing
    # anonymous calls before they take a thread, and the pools above, bound what they cost.
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=RPC_THREADS, thread_name_prefix="rpc"),
        interceptors=[
            ServiceInterceptor(
                application.callers,
                metrics,
                client_certificates=settings.tls is not None and settings.tls.mutual,
                open_reflection=reflection is ReflectionMode.OPEN,
                pools=pools,
                access_log=access_log,
            )
        ],
        options=options,
    )
    servicer = GarminAuthServicer(application.use_cases)
    garmin_auth_pb2_grpc.add_GarminAuthServiceServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers(tuple(extra_handlers))
    health_servicer = EndingHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if reflection is not ReflectionMode.OFF:
        enable_reflection([SERVICE_NAME, health.SERVICE_NAME], server)
    address = listen or settings.listen
    health_listener = None
    try:
        port = _bind(server, address, certificates)
        health_listener = _start_health_listener(settings)
        endpoint = _start_metrics(application)
    except BaseException:
        # Nothing may keep the process alive after a setting stopped the start.
        if health_listener is not None:
            health_listener.stop(grace=0)
        access_log.close()
        raise
    server.start()
    use_cases = application.use_cases
    housekeeper = Periodic(
        "housekeeping", use_cases.housekeeping.run_once, settings.housekeeping_interval_seconds
    )
    keepalive = Periodic(
        "keepalive",
        use_cases.keepalive.run_once,
        settings.refresh.keepalive_interval_seconds,
        jitter=KEEPALIVE_JITTER,
    )
    webhooks = (
        None
        if use_cases.webhooks is None
        else Periodic("webhooks", use_cases.webhooks.run_once, settings.webhooks.poll_seconds)
    )
    running = RunningServer(
        server=server,
        port=port,
        health=HealthBoard(health_servicer, health_listener),
        application=application,
        housekeeper=housekeeper,
        keepalive=keepalive,
        webhooks=webhooks,
        metrics_endpoint=endpoint,
        certificates=certificates,
        health_listener=health_listener,
        pools=pools,
        access_log=access_log,
        stop_streams=servicer.stop_streams,
    )
    running.probe_once()
    running.start_probe()
    housekeeper.start()
    keepalive.start()
    application.change_signal.start()
    application.sequencer.start()
    if webhooks is not None:
        webhooks.start()
    log.info(
        "serving %s on port %d (%s; health %s; reflection %s; metrics %s; database %s)",
        SERVICE_NAME,
        port,
        _transport_description(certificates),
        f"on port {health_listener.port}" if health_listener is not None else "main port only",
        reflection.value,
        f"on port {endpoint.port}" if endpoint is not None else "off",
        redacted_database_url(settings.database_url),
    )
    return running


def _bind(server: grpc.Server, address: str, certificates: CertificateReloader | None) -> int:
    try:
        if certificates is not None:
            return server.add_secure_port(address, certificates.credentials())
        return server.add_insecure_port(address)
    except RuntimeError:
        # Port taken or address not local: one line naming the variable, like any setting.
        raise ConfigError(PREFIX + "LISTEN", f"cannot listen on {address}") from None


def _start_health_listener(settings: Settings) -> HealthListener | None:
    address = settings.serving.health_listen
    if address is None:
        return None
    try:
        return HealthListener(address).start()
    except HealthListenerError as exc:
        raise ConfigError(PREFIX + "HEALTH_LISTEN", str(exc)) from None


def _release_webhooks(delivery: WebhookDelivery) -> None:
    """Hand the webhook claim over at once; a replica that cannot waits out its lease."""
    try:
        delivery.release()
    except Exception as exc:  # noqa: BLE001 - stopping anyway; the claim expires by itself
        log.warning("could not release the webhook claim (%s)", type(exc).__name__)


def _start_metrics(application: Application) -> MetricsEndpoint | None:
    listen = application.settings.metrics.listen
    if listen is None:
        return None
    try:
        return start_metrics_endpoint(listen, application.metrics.registry)
    except OSError as exc:
        # Port taken or address not local: one line naming the variable, like any setting.
        raise ConfigError(
            PREFIX + "METRICS_LISTEN", f"cannot listen on {listen} ({exc.strerror})"
        ) from None


def _transport_description(certificates: CertificateReloader | None) -> str:
    if certificates is None:
        return "plaintext"
    kind = "mutual TLS" if certificates.mutual else "TLS"
    return f"{kind}, certificate {certificates.material.describe()}"


def serve_until_signalled(running: RunningServer) -> None:
    """Block until SIGTERM/SIGINT, then stop gracefully."""
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s received; stopping gracefully", signal.Signals(signum).name)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    stopping.wait()
    running.stop()
    log.info("stopped")
