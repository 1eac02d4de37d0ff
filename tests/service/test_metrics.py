"""The Prometheus endpoint, scraped over HTTP while real RPCs run: the figures move."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

import grpc
import pytest
import requests
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from auth_service.config import MetricsSettings
from auth_service.domain.clock import FakeClock
from auth_service.domain.events import current_listener
from auth_service.domain.garmin_limits import GarminLimitSettings
from auth_service.domain.policies import DiSettings, LoginFlow
from auth_service.metrics.service import go_code_name
from auth_service.upstream.observer import RpcListenerObserver
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_client.observe import endpoint_template, observed
from garmin_emulator import BLOCK_RATE_LIMITED, GarminEmulator
from tests.fixtures.servers import ROLE_TOKENS, Replica, ServiceFactory, expect_failure
from tests.service.test_garth_sessions_to_di import connect_di, populate
from tests.service.test_login import PASSWORD, login
from tests.service.test_status_import_delete import garmin_tokens, import_tokens

SERVICE = "garmin_auth.v1.GarminAuthService"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# The database gauges and the lease path run on both backends; the rest on SQLite only.
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"])


def scrape(replica: Replica) -> Samples:
    port = replica.running.metrics_port
    assert port is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def rpc(method: str, service: str = SERVICE) -> dict[str, str]:
    return {"grpc_type": "unary", "grpc_service": service, "grpc_method": method}


def with_metrics(factory: ServiceFactory, **overrides: Any) -> Replica:
    # No cache, so a scrape right after a change sees it.
    metrics = MetricsSettings(listen="127.0.0.1:0", database_cache_seconds=0)
    return factory.start(metrics=metrics, **overrides)


def moved(replica: Replica, action: Callable[[], object]) -> Callable[..., float]:
    """Run `action`; returns how far a sample moved meanwhile (name, **labels)."""
    before = scrape(replica)
    action()
    after = scrape(replica)
    return lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)


@sqlite_only
def test_rpc_counts_with_go_grpc_prometheus_names(service_factory: ServiceFactory) -> None:
    replica = with_metrics(service_factory)
    # Every method and code exists before the first call (dashboards' rate() needs zeros).
    first = scrape(replica)
    assert ("grpc_server_started_total", frozenset(rpc("LeaseSession").items())) in first
    handled_zero = {**rpc("Login"), "grpc_code": "Unavailable"}
    assert ("grpc_server_handled_total", frozenset(handled_zero.items())) in first

    delta = moved(
        replica, lambda: replica.call("GetStatus", pb.GetStatusRequest(user_id="u"), "viewer")
    )
    assert delta("grpc_server_started_total", **rpc("GetStatus")) == 1
    assert delta("grpc_server_handled_total", **rpc("GetStatus"), grpc_code="OK") == 1
    assert delta("grpc_server_handling_seconds_count", **rpc("GetStatus")) == 1
    assert delta("grpc_server_started_total", **rpc("ListSessions")) == 0


@sqlite_only
def test_failed_rpcs_count_under_their_code(service_factory: ServiceFactory) -> None:
    replica = with_metrics(service_factory)

    def fail_three_ways() -> None:
        expect_failure(lambda: replica.call("GetStatus", pb.GetStatusRequest(user_id="u"), None))
        expect_failure(lambda: replica.call("GetStatus", pb.GetStatusRequest(user_id="")))
        expect_failure(lambda: replica.call("Login", pb.LoginRequest(user_id="u"), "viewer"))

    delta = moved(replica, fail_three_ways)
    get_status = rpc("GetStatus")
    assert delta("grpc_server_handled_total", **get_status, grpc_code="Unauthenticated") == 1
    assert delta("grpc_server_handled_total", **get_status, grpc_code="InvalidArgument") == 1
    assert delta("grpc_server_handled_total", **rpc("Login"), grpc_code="PermissionDenied") == 1
    assert delta("grpc_server_started_total", **get_status) == 2


@sqlite_only
def test_health_check_is_counted(service_factory: ServiceFactory) -> None:
    replica = with_metrics(service_factory)
    health = health_pb2_grpc.HealthStub(replica.channel)
    health_rpc = rpc("Check", "grpc.health.v1.Health")

    def check_twice() -> None:
        health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        with pytest.raises(grpc.RpcError):
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)

    delta = moved(replica, check_twice)
    assert delta("grpc_server_handled_total", **health_rpc, grpc_code="OK") == 1
    assert delta("grpc_server_handled_total", **health_rpc, grpc_code="NotFound") == 1


def test_lease_grants_takeovers_and_losses(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    clock = FakeClock(datetime.now(UTC))
    replica = with_metrics(service_factory, clock=clock)
    import_tokens(replica, "lee", garmin_tokens(replica, garmin, "lee@example.com"))
    ttl = duration_pb2.Duration(seconds=30)

    def lease(holder: str) -> pb.LeaseSessionResponse:
        request = pb.LeaseSessionRequest(user_id="lee", holder=holder, ttl=ttl)
        return cast(pb.LeaseSessionResponse, replica.call("LeaseSession", request, "worker"))

    first = lease("worker-a")
    # Refused: worker-a holds it.
    delta = moved(replica, lambda: expect_failure(lambda: lease("worker-b")))
    assert delta("garmin_auth_lease_grants_total", grpc_method="LeaseSession") == 0
    assert delta("grpc_server_handled_total", **rpc("LeaseSession"), grpc_code="Aborted") == 1
    assert value(scrape(replica), "garmin_auth_leases_live") == 1

    clock.advance(60)  # worker-a stalls past its lease
    assert value(scrape(replica), "garmin_auth_leases_expired") == 1
    delta = moved(replica, lambda: lease("worker-b"))
    assert delta("garmin_auth_lease_grants_total", grpc_method="LeaseSession") == 1
    assert delta("garmin_auth_lease_takeovers_total") == 1

    renew = pb.RenewLeaseRequest(lease_id=first.lease.lease_id)
    delta = moved(
        replica, lambda: expect_failure(lambda: replica.call("RenewLease", renew, "worker"))
    )
    assert delta("garmin_auth_lease_losses_total", grpc_method="RenewLease") == 1
    assert delta("garmin_auth_lease_takeovers_total") == 0

    # LeaseNextSession counts a grant only when it found a due session.
    next_request = pb.LeaseNextSessionRequest(holder="worker-c", ttl=ttl)
    delta = moved(replica, lambda: replica.call("LeaseNextSession", next_request, "worker"))
    assert delta("garmin_auth_lease_grants_total", grpc_method="LeaseNextSession") == 0
    assert delta("grpc_server_handled_total", **rpc("LeaseNextSession"), grpc_code="OK") == 1


@sqlite_only
def test_upstream_calls_by_endpoint_and_outcome(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    replica = with_metrics(service_factory)
    garmin.add_user("uma@example.com", PASSWORD)
    delta = moved(replica, lambda: login(replica, "uma", "uma@example.com"))
    login_call = {"endpoint": "/mobile/api/login", "outcome": "2xx"}
    assert delta("garmin_auth_upstream_requests_total", **login_call) == 1
    exchange = {"endpoint": "/oauth-service/oauth/exchange/user/2.0", "outcome": "2xx"}
    assert delta("garmin_auth_upstream_requests_total", **exchange) == 1
    assert delta("garmin_auth_upstream_request_seconds_count", endpoint="/mobile/api/login") == 1

    # Garmin's 429 gets its own outcome; no series carries a query (the SSO ticket).
    garmin.fail_next("/mobile/api/login", 429)
    delta = moved(replica, lambda: expect_failure(lambda: login(replica, "uma", "uma@example.com")))
    throttled = {"endpoint": "/mobile/api/login", "outcome": "429"}
    assert delta("garmin_auth_upstream_requests_total", **throttled) == 1
    endpoints = {
        dict(labels).get("endpoint", "")
        for name, labels in scrape(replica)
        if name == "garmin_auth_upstream_requests_total"
    }
    assert endpoints
    assert not any("?" in endpoint or "ticket" in endpoint for endpoint in endpoints)


@pytest.mark.parametrize("plain_http", [False, True], ids=["curl_cffi", "requests"])
def test_di_sign_in_calls_are_counted_whichever_client_sends_them(
    service_factory: ServiceFactory, garmin: GarminEmulator, plain_http: bool
) -> None:
    replica = with_metrics(
        service_factory, login_flow=LoginFlow.DI, di=DiSettings(plain_http=plain_http)
    )
    garmin.add_user("dia@example.com", PASSWORD)
    delta = moved(replica, lambda: login(replica, "dia", "dia@example.com"))
    login_call = {"endpoint": "/mobile/api/login", "outcome": "2xx"}
    assert delta("garmin_auth_upstream_requests_total", **login_call) == 1
    token_call = {"endpoint": "/di-oauth2-service/oauth/token", "outcome": "2xx"}
    assert delta("garmin_auth_upstream_requests_total", **token_call) == 1


def test_gauges_follow_the_database(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    replica = with_metrics(service_factory)
    before = scrape(replica)
    assert value(before, "garmin_auth_database_metrics_up") == 1
    assert value(before, "garmin_auth_sessions", state="ACTIVE") == 0
    import_tokens(replica, "ivy", garmin_tokens(replica, garmin, "ivy@example.com"))
    garmin.add_user("max@example.com", PASSWORD, mfa=True, mfa_code="123456")
    login(replica, "max", "max@example.com")  # waits for its MFA code
    after = scrape(replica)
    assert value(after, "garmin_auth_sessions", state="ACTIVE") == 1
    assert value(after, "garmin_auth_sessions", state="MFA_PENDING") == 1
    assert value(after, "garmin_auth_sessions", state="AUTH_EXPIRED") == 0
    assert value(after, "garmin_auth_mfa_challenges_pending") == 1
    assert value(after, "garmin_auth_leases_live") == 0


def test_active_garth_sessions_are_counted_apart(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    """garmin_auth_garth_sessions_active: the ACTIVE garth sessions, never the DI ones nor a
    garth user's deleted, expired or pending-MFA row."""
    replica = with_metrics(service_factory, login_flow=LoginFlow.DI)
    assert ("garmin_auth_garth_sessions_active", frozenset()) in scrape(replica)
    populate(replica, garmin)  # 5 garth and 3 DI sessions ACTIVE; 3 garth users in other states
    samples = scrape(replica)
    assert samples[("garmin_auth_garth_sessions_active", frozenset())] == 5
    # Every kind still counts in the sessions by state.
    assert value(samples, "garmin_auth_sessions", state="ACTIVE") == 8
    assert value(samples, "garmin_auth_sessions", state="NOT_CONNECTED") == 1
    assert value(samples, "garmin_auth_sessions", state="AUTH_EXPIRED") == 1
    assert value(samples, "garmin_auth_sessions", state="MFA_PENDING") == 1
    # One of them signs in again with DI: a garth session fewer.
    connect_di(replica, garmin, "u-01")
    assert value(scrape(replica), "garmin_auth_garth_sessions_active") == 4


def test_signin_cooldowns_are_counted(
    service_factory: ServiceFactory, garmin: GarminEmulator
) -> None:
    replica = with_metrics(service_factory, login_flow=LoginFlow.DI, di=DiSettings(plain_http=True))
    assert value(scrape(replica), "garmin_auth_signin_cooldowns_active") == 0
    garmin.add_user("coy@example.com", PASSWORD)
    garmin.block_logins(BLOCK_RATE_LIMITED, retry_after=60)
    limited = expect_failure(lambda: login(replica, "coy", "coy@example.com"))
    assert limited.reason == "GARMIN_RATE_LIMITED"
    assert value(scrape(replica), "garmin_auth_signin_cooldowns_active") == 1


def test_garmin_limits_are_visible(service_factory: ServiceFactory, garmin: GarminEmulator) -> None:
    replica = with_metrics(
        service_factory,
        login_flow=LoginFlow.DI,
        di=DiSettings(plain_http=True),
        limits=GarminLimitSettings(breaker_threshold=1),
    )
    before = scrape(replica)
    assert value(before, "garmin_auth_account_cooldowns_active") == 0
    assert value(before, "garmin_auth_garmin_breaker_state", endpoint="sso") == 0
    garmin.add_user("cal@example.com", PASSWORD)
    garmin.block_logins(BLOCK_RATE_LIMITED, retry_after=60)
    expect_failure(lambda: login(replica, "cal", "cal@example.com"))
    again = expect_failure(lambda: login(replica, "cal", "cal@example.com"))
    assert again.reason == "GARMIN_RATE_LIMITED"

    after = scrape(replica)
    assert value(after, "garmin_auth_account_cooldowns_active") == 1
    # One 429 reaches the threshold of 1: the breaker of the sign-in endpoint is open.
    assert value(after, "garmin_auth_garmin_breaker_state", endpoint="sso") == 1
    assert value(after, "garmin_auth_garmin_breaker_state", endpoint="di_token") == 0
    assert value(after, "garmin_auth_garmin_rate_limited_total", endpoint="sso", opened="true") == 1
    # The second login never reached Garmin: the account's sign-in cooldown answered it.
    suppressed = value(
        after, "garmin_auth_garmin_calls_suppressed_total", endpoint="sso", reason="signin_cooldown"
    )
    assert suppressed == 1


@sqlite_only
def test_gauges_are_cached(service_factory: ServiceFactory, garmin: GarminEmulator) -> None:
    replica = service_factory.start(
        metrics=MetricsSettings(listen="127.0.0.1:0", database_cache_seconds=3600)
    )
    assert value(scrape(replica), "garmin_auth_sessions", state="ACTIVE") == 0
    import_tokens(replica, "ada", garmin_tokens(replica, garmin, "ada@example.com"))
    assert value(scrape(replica), "garmin_auth_sessions", state="ACTIVE") == 0


@sqlite_only
def test_each_replica_has_its_own_registry(service_factory: ServiceFactory) -> None:
    first, second = with_metrics(service_factory), with_metrics(service_factory)
    assert first.running.metrics_port != second.running.metrics_port
    delta_second = moved(
        second,
        lambda: first.call("GetStatus", pb.GetStatusRequest(user_id="u"), "viewer"),
    )
    assert delta_second("grpc_server_started_total", **rpc("GetStatus")) == 0
    assert value(scrape(first), "grpc_server_started_total", **rpc("GetStatus")) == 1


@sqlite_only
def test_no_metrics_port_unless_configured(service: Replica) -> None:
    assert service.running.metrics_port is None


@sqlite_only
def test_endpoint_stops_with_the_server(service_factory: ServiceFactory) -> None:
    replica = with_metrics(service_factory)
    port = replica.running.metrics_port
    scrape(replica)
    replica.stop()
    service_factory.replicas.remove(replica)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


# --- the upstream hook on its own ------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "template"),
    [
        ("https://connectapi.garmin.com/oauth-service/oauth/exchange/user/2.0", None),
        ("https://sso.garmin.com/portal/sso/embed?ticket=ST-123-secret", "/portal/sso/embed"),
        (
            "https://connectapi.garmin.com/download-service/files/activity/12345678",
            "/download-service/files/activity/{id}",
        ),
        (
            "https://connectapi.garmin.com/x/5f2b6c1e-8a1d-4c0b-9f7e-1a2b3c4d5e6f/y",
            "/x/{id}/y",
        ),
        ("https://connectapi.garmin.com/u/someone@example.com", "/u/{id}"),
    ],
)
def test_endpoint_template(url: str, template: str | None) -> None:
    assert endpoint_template(url) == (template or url.removeprefix("https://connectapi.garmin.com"))


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def lease_taken_over(self) -> None:
        raise AssertionError("not expected")

    def upstream_call(self, endpoint: str, outcome: str, seconds: float) -> None:
        assert seconds >= 0
        self.calls.append((endpoint, outcome))


SendT = Callable[[object, requests.PreparedRequest], requests.Response]


def observe_upstream_send(send: SendT) -> SendT:
    """`send`, observed as garmin_client's transport observes it for the service."""

    def observed_send(self: object, request: requests.PreparedRequest) -> requests.Response:
        return observed(
            RpcListenerObserver(),
            request.url or "",
            lambda: send(self, request),
            lambda response: response.status_code,
        )

    return observed_send


def test_upstream_hook_outcomes() -> None:
    def send_raising(error: Exception) -> SendT:
        def send(_self: object, _request: requests.PreparedRequest) -> requests.Response:
            raise error

        return observe_upstream_send(send)

    def send_answering(status: int) -> SendT:
        def send(_self: object, _request: requests.PreparedRequest) -> requests.Response:
            response = requests.Response()
            response.status_code = status
            return response

        return observe_upstream_send(send)

    request = requests.Request("GET", "https://connectapi.garmin.com/a/b?q=1").prepare()
    recorder = _Recorder()
    token = current_listener.set(recorder)
    try:
        send_answering(204)(None, request)
        send_answering(503)(None, request)
        with pytest.raises(requests.ConnectTimeout):
            send_raising(requests.ConnectTimeout())(None, request)
        with pytest.raises(requests.ConnectionError):
            send_raising(requests.ConnectionError())(None, request)
    finally:
        current_listener.reset(token)
    assert recorder.calls == [
        ("/a/b", "2xx"),
        ("/a/b", "5xx"),
        ("/a/b", "timeout"),
        ("/a/b", "error"),
    ]
    # Outside an RPC nobody listens, and nothing breaks.
    send_answering(200)(None, request)
    assert len(recorder.calls) == 4


@pytest.mark.parametrize(
    ("name", "go_name"),
    [
        ("OK", "OK"),
        ("CANCELLED", "Canceled"),
        ("INVALID_ARGUMENT", "InvalidArgument"),
        ("DEADLINE_EXCEEDED", "DeadlineExceeded"),
        ("RESOURCE_EXHAUSTED", "ResourceExhausted"),
        ("UNAUTHENTICATED", "Unauthenticated"),
    ],
)
def test_codes_are_labelled_as_go_grpc_prometheus_does(name: str, go_name: str) -> None:
    assert go_code_name(name) == go_name


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_watch_stream_is_counted_as_a_server_stream(service_factory: ServiceFactory) -> None:
    """go-grpc-prometheus labels a server-streaming method server_stream; before, every
    stream's whole life (minutes) landed in the unary latency histogram dashboards read."""
    replica = with_metrics(service_factory)
    stream = replica.stub.WatchSessionEvents(
        pb.WatchSessionEventsRequest(),
        metadata=(("authorization", f"Bearer {ROLE_TOKENS['viewer']}"),),
        timeout=30,
    )
    next(stream)  # the first heartbeat
    time.sleep(1.0)
    stream.cancel()
    time.sleep(0.5)
    samples = scrape(replica)
    labels = {"grpc_service": SERVICE, "grpc_method": "WatchSessionEvents"}
    unary = value(samples, "grpc_server_handling_seconds_count", grpc_type="unary", **labels)
    streamed = value(samples, "grpc_server_started_total", grpc_type="server_stream", **labels)
    # The stream is a server stream, not a unary call with a one-second latency.
    assert unary == 0
    assert streamed == 1
