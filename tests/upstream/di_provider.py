"""Helpers for the DI provider's tests: the real provider against the emulator over HTTP."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from auth_service.domain.models import GarminTokens, LoginSucceeded, OAuth2Token
from auth_service.domain.policies import DiSettings
from auth_service.upstream.di.provider import DiUpstream
from garmin_emulator import KNOWN_DI_CLIENT_IDS, EmulatedUser, GarminEmulator

from .conftest import make_settings


def di_upstream(emulator: GarminEmulator, **di: object) -> DiUpstream:
    """The DI provider pointed at the emulator (curl_cffi unless plain_http=True)."""
    return DiUpstream(make_settings(emulator), dataclasses.replace(DiSettings(), **di))  # type: ignore[arg-type]


def di_login(upstream: DiUpstream, user: EmulatedUser) -> GarminTokens:
    result = upstream.login(user.email, user.password)
    assert isinstance(result, LoginSucceeded)
    return result.tokens


def issued_tokens(
    emulator: GarminEmulator,
    email: str,
    *,
    domain: str = "garmin.com",
    client_id: str = KNOWN_DI_CLIENT_IDS[0],
) -> GarminTokens:
    """A DI session straight from the emulator's diauth.<domain> (no sign-in), as the service
    would store it."""
    answer = emulator.issue_di_tokens(email, client_id=client_id, domain=domain)
    now = datetime.now(UTC).timestamp()
    return GarminTokens(
        oauth1=None,
        oauth2=OAuth2Token(
            scope=answer["scope"],
            jti=answer["jti"],
            token_type=answer["token_type"],
            access_token=answer["access_token"],
            refresh_token=answer["refresh_token"],
            expires_at=datetime.fromtimestamp(now + answer["expires_in"], UTC),
            refresh_token_expires_at=datetime.fromtimestamp(
                now + answer["refresh_token_expires_in"], UTC
            ),
        ),
        domain=domain,
        di_client_id=client_id,
        refresh_token_lifetime_seconds=answer["refresh_token_expires_in"],
    )
