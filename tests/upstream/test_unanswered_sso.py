"""Which SSO failures count an MFA code as sent (GarminUnavailable.unanswered).

A request that never left this machine (name not resolved, connection refused, a connect
that timed out) cannot have been judged by Garmin: counting it burns one of the user's three
tries (and keeps the claim: MFA_CHALLENGE_BUSY) for an outage of ours or Garmin's.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest
import requests
from urllib3.exceptions import MaxRetryError, NameResolutionError

from auth_service.domain.errors import GarminUnavailable
from auth_service.domain.policies import DEFAULT_IMPERSONATE
from auth_service.upstream.di.sso_http import SsoHttp
from garmin_client.answers import classify
from garmin_client.errors import Unavailable
from garmin_client.http_session import upstream_session
from garmin_client.settings import UpstreamSettings
from garmin_client.transport import UpstreamTransport

URL = "https://sso.garmin.com/mobile/api/mfa/verifyCode"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _sso(base_url: str, *, plain_http: bool, timeout: float = 2.0) -> SsoHttp:
    upstream = UpstreamSettings(
        "key", "secret", base_url=base_url, timeout_seconds=timeout, retries=0
    )
    return SsoHttp(upstream, impersonate=DEFAULT_IMPERSONATE, plain_http=plain_http, observer=None)


def _unanswered(sso: SsoHttp) -> bool:
    with pytest.raises(GarminUnavailable) as caught:
        sso.post_json(
            URL, {"clientId": "x"}, {"mfaMethod": "email", "mfaVerificationCode": "123456"}, {}
        )
    return caught.value.unanswered


@pytest.mark.parametrize("plain_http", [False, True], ids=["curl_cffi", "plain"])
def test_a_refused_connection_does_not_count_as_sent(plain_http: bool) -> None:
    sso = _sso(f"http://127.0.0.1:{_closed_port()}", plain_http=plain_http)
    assert _unanswered(sso) is False, (
        "a POST whose connection was refused counts as possibly judged by Garmin: the "
        "user's MFA try is burnt and the challenge stays claimed"
    )


@pytest.mark.parametrize("plain_http", [False, True], ids=["curl_cffi", "plain"])
def test_a_name_that_does_not_resolve_does_not_count_as_sent(plain_http: bool) -> None:
    sso = _sso("http://garmin-upstream.invalid", plain_http=plain_http)
    assert _unanswered(sso) is False, (
        "a POST whose host name did not resolve counts as possibly judged by Garmin"
    )


@pytest.fixture
def unaccepting_listener() -> Iterator[int]:
    """A listener whose accept queue is full: a further connect hangs in SYN_SENT (Linux drops
    the SYN), i.e. a connect timeout with nothing sent."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def _guard_connect_hangs(port: int) -> None:
    # The connect really does hang (else these tests prove nothing).
    probe = socket.socket()
    probe.settimeout(0.5)
    with pytest.raises(OSError, match="timed out"):
        probe.connect(("127.0.0.1", port))
    probe.close()


def test_curl_connect_timeout_does_not_count_as_sent(unaccepting_listener: int) -> None:
    _guard_connect_hangs(unaccepting_listener)
    sso = _sso(f"http://127.0.0.1:{unaccepting_listener}", plain_http=False, timeout=1.0)
    assert _unanswered(sso) is False, (
        "a connect timeout through curl_cffi (which raises Timeout, never ConnectTimeout, for "
        "curl's code 28) counts as possibly judged by Garmin"
    )


def test_plain_connect_timeout_does_not_count_as_sent(unaccepting_listener: int) -> None:
    _guard_connect_hangs(unaccepting_listener)
    sso = _sso(f"http://127.0.0.1:{unaccepting_listener}", plain_http=True, timeout=1.0)
    assert _unanswered(sso) is False, (
        "connect timeouts until the whole-call deadline: the transport raises a bare "
        "requests.Timeout, read as a request that may have reached Garmin"
    )


def test_garth_transport_connect_timeout_does_not_count_as_sent(unaccepting_listener: int) -> None:
    """garth's resume POSTs through its requests session with our UpstreamTransport mounted."""
    _guard_connect_hangs(unaccepting_listener)
    upstream = UpstreamSettings(
        "key",
        "secret",
        base_url=f"http://127.0.0.1:{unaccepting_listener}",
        timeout_seconds=1.0,
        retries=1,
    )
    session = upstream_session()
    session.mount("https://", UpstreamTransport(upstream))
    with pytest.raises(requests.RequestException) as caught:
        session.post(
            "https://sso.garmin.com/sso/verifyMFA/loginEnterMfaCode", data={"mfa-code": "1"}
        )
    error = classify(caught.value, judging_tokens=False)
    assert isinstance(error, Unavailable)
    assert error.unanswered is False, (
        f"{type(caught.value).__name__} ({caught.value}) after connects that never completed "
        "counts the code as possibly judged"
    )


def test_garth_dns_failure_does_not_count_as_sent() -> None:
    reason = NameResolutionError("sso.garmin.com", None, socket.gaierror("no"))  # type: ignore[arg-type]
    failure = requests.ConnectionError(MaxRetryError(None, URL, reason))  # type: ignore[arg-type]
    error = classify(failure, judging_tokens=False)
    assert isinstance(error, Unavailable)
    assert error.unanswered is False


def test_whole_call_deadline_counts_as_sent() -> None:
    # What garmin_client.transport raises when the deadline cut a request that was sent.
    error = classify(requests.Timeout("no answer from Garmin within 6 s"), judging_tokens=False)
    assert isinstance(error, Unavailable)
    assert error.unanswered is True
