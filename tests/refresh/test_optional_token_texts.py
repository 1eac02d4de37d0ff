"""An OAuth2 token's scope and jti are optional in every way a session comes in, as in what
the service stores itself. When one set of token rules (domain.validation.check_tokens) was
made common to imports and ReportRefreshed, it required both: a DI refresh answer without a
jti, stored with jti "", was handed to a worker_full holder who could not report it back
(INVALID_ARGUMENT session.oauth2.jti: is required); a token file's JWT without those claims,
and garth dumps with an empty scope or jti, which had imported before, were refused."""

from __future__ import annotations

import base64
import json
import time
from datetime import timedelta

import grpc
import pytest

from auth_service.domain.validation import check_tokens
from auth_service.upstream.di.garminconnect import tokens_from_garminconnect
from auth_service.upstream.garth.dumps import tokens_from_garth_dumps
from garmin_auth.v1 import garmin_auth_pb2 as pb
from tests.fixtures.di_upstream import both_providers
from tests.fixtures.servers import ServiceFactory, failure_of
from tests.refresh import DiAccounts

pytestmark = pytest.mark.timeout(60)


def test_a_session_the_services_own_di_refresh_stored_can_be_reported_back(
    service_factory: ServiceFactory, di_accounts: DiAccounts
) -> None:
    """A DI token answer without `jti` is stored with jti "". A worker_full holder gets that
    session in its grant and reports it back unchanged at the grant's version: that must work
    (it answered INVALID_ARGUMENT 'session.oauth2.jti: is required')."""
    replica = service_factory.start(provider=both_providers(service_factory.base_settings.upstream))
    di_accounts.seed("jti-less", access_in=timedelta(seconds=5))
    di_accounts.emulator.di.answer_overrides = {"jti": None}
    try:
        request = pb.LeaseSessionRequest(user_id="jti-less", holder="legacy")
        granted = replica.call("LeaseSession", request, "worker_full")
    finally:
        di_accounts.emulator.di.answer_overrides = {}
    assert di_accounts.refreshes("jti-less") == 1  # the grant refreshed it centrally
    assert granted.session.oauth2.jti == ""
    report = pb.ReportRefreshedRequest(
        lease_id=granted.lease.lease_id,
        session=granted.session,
        session_version=granted.status.session_version,
    )
    try:
        replica.call("ReportRefreshed", report, "worker_full")
    except grpc.RpcError as error:
        failure = failure_of(error)
        pytest.fail(
            f"ReportRefreshed of the granted session unchanged: {failure.code.name} "
            f"{failure.message}"
        )


def test_a_garminconnect_token_file_imports_only_what_the_token_rules_accept() -> None:
    """The garminconnect_tokens source reads jti "" and scope "" for a DI access token
    without those claims: the common rules accept that, as ReportRefreshed does."""

    claims = {"exp": int(time.time()) + 3600, "client_id": "GARMIN_CONNECT_MOBILE_ANDROID_DI"}
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    text = json.dumps(
        {
            "di_token": f"e30.{body}.c2ln",
            "di_refresh_token": "r" * 40,
            "di_client_id": "GARMIN_CONNECT_MOBILE_ANDROID_DI",
        }
    )
    tokens = tokens_from_garminconnect(text)  # accepted by the import
    assert check_tokens(tokens) == []


@pytest.mark.parametrize("field", ["scope", "jti"])
def test_a_garth_dump_with_an_empty_scope_or_jti_still_imports(field: str) -> None:
    """It imported before the common rules, and does again (they refused it: 'is required')."""

    now = int(time.time())
    oauth1 = {"oauth_token": "a" * 40, "oauth_token_secret": "b" * 40, "domain": "garmin.com"}
    oauth2 = {
        "scope": "CONNECT_READ CONNECT_WRITE",
        "jti": "5c1d0b9e-0000-4000-8000-1234567890ab",
        "token_type": "Bearer",
        "access_token": "x" * 200,
        "refresh_token": "y" * 40,
        "expires_in": 3600,
        "expires_at": now + 3600,
        "refresh_token_expires_in": 7200,
        "refresh_token_expires_at": now + 7200,
        field: "",
    }
    dump = base64.b64encode(json.dumps([oauth1, oauth2]).encode()).decode()
    tokens = tokens_from_garth_dumps(dump)
    assert getattr(tokens.oauth2, field) == ""
