"""GetStatus(validate)'s profile GET ends within its retry budget (timeout x attempts), its
answer's body included, however slowly Garmin's answer trickles in, on the DI provider as on
garth's.

Before, the DI provider's Connect API client timed each read only: a profile answer that
trickled in a byte every 0.2 s, each within the read timeout, held the RPC's thread for as long
as Garmin kept it coming. Every validation then outlived the account's exclusive claim
(GARMIN_AUTH_BREAKER_PROBE_TIMEOUT), so the next GetStatus(validate) took another thread, until
the server had none left for any RPC."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from auth_service.domain.errors import GarminUnavailable
from auth_service.domain.models import GarminTokens, OAuth2Token
from auth_service.domain.policies import DiSettings
from auth_service.upstream.di.provider import DiUpstream
from garmin_client.settings import UpstreamSettings

from .test_call_deadline import TRICKLE_SECONDS, trickling

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 0.5
RETRIES = 1
BUDGET = TIMEOUT * (RETRIES + 1)
# A JWT-shaped bearer (the Connect API client sends it as it is); nothing checks it here.
ACCESS = "eyJhbGciOiJub25lIn0.eyJleHAiOjQxMDI0NDQ4MDB9.c2ln"


def _tokens() -> GarminTokens:
    now = datetime.now(UTC)
    return GarminTokens(
        oauth1=None,
        oauth2=OAuth2Token(
            scope="",
            jti="j",
            token_type="bearer",
            access_token=ACCESS,
            refresh_token="r" * 40,
            expires_at=now + timedelta(hours=1),
            refresh_token_expires_at=now + timedelta(days=30),
        ),
        domain="garmin.com",
        di_client_id="GARMIN_CONNECT_MOBILE_ANDROID_DI",
    )


@pytest.mark.parametrize("part", ["body", "head"])
def test_a_trickling_profile_answer_ends_validate_within_its_budget(part: str) -> None:
    with trickling(part=part, body=b'{"displayName": "' + b"x" * 100 + b'"}') as url:
        settings = UpstreamSettings(
            consumer_key="k",
            consumer_secret="s",
            base_url=url,
            timeout_seconds=TIMEOUT,
            retries=RETRIES,
        )
        upstream = DiUpstream(settings, DiSettings())
        started = time.monotonic()
        try:
            upstream.validate(_tokens(), allow_refresh=False)
            outcome = "answered"
        except GarminUnavailable as exc:
            outcome = exc.message
        took = time.monotonic() - started
    assert took < BUDGET + 1.5, (
        f"validate took {took:.1f} s ({outcome}) on an answer trickling for "
        f"{TRICKLE_SECONDS:g} s; its budget is {BUDGET:g} s"
    )
    # Garmin not answering in time: try later, never a verdict on the session.
    assert "in time" in outcome or "within" in outcome, outcome
