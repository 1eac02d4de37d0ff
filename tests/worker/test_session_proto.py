"""Garmin tokens to and from garmin_auth.v1.GarminSession, as the worker reads its grants."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_client.session_proto import MalformedSession, tokens_from_proto, tokens_to_proto
from garmin_client.tokens import GarminTokens, OAuth1Token, OAuth2Token, SessionKind

EXPIRES = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
TOKENS = GarminTokens(
    oauth1=OAuth1Token(oauth_token="o1-token", oauth_token_secret="o1-secret"),
    oauth2=OAuth2Token(
        scope="CONNECT_READ",
        jti="jti-1",
        token_type="Bearer",
        access_token="access-1",
        refresh_token="refresh-1",
        expires_at=EXPIRES,
        refresh_token_expires_at=EXPIRES + timedelta(days=30),
    ),
)


def test_tokens_survive_the_round_trip() -> None:
    assert tokens_from_proto(tokens_to_proto(TOKENS)) == TOKENS
    with_mfa = dataclasses.replace(
        TOKENS,
        oauth1=dataclasses.replace(
            TOKENS.oauth1_token(),
            mfa_token="mfa-1",
            mfa_expires_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(microseconds=5),
        ),
        domain="garmin.cn",
    )
    assert tokens_from_proto(tokens_to_proto(with_mfa)) == with_mfa


def test_an_empty_domain_reads_as_garmin_com() -> None:
    session = tokens_to_proto(TOKENS)
    session.domain = ""
    assert tokens_from_proto(session).domain == "garmin.com"


def _clear(part: str, name: str) -> Callable[[pb.GarminSession], None]:
    return lambda session: getattr(session, part).ClearField(name)


def _set_domain(session: pb.GarminSession) -> None:
    session.domain = "example.com"


def _far_future(session: pb.GarminSession) -> None:
    session.oauth2.refresh_token_expires_at.seconds = 10**12


@pytest.mark.parametrize(
    ("damage", "field"),
    [
        (lambda session: session.ClearField("oauth1"), "oauth1"),
        (lambda session: session.ClearField("oauth2"), "oauth2"),
        (_set_domain, "domain"),
        (_clear("oauth1", "oauth_token_secret"), "oauth1.oauth_token_secret"),
        (_clear("oauth2", "refresh_token"), "oauth2.refresh_token"),
        (_clear("oauth2", "expires_at"), "oauth2.expires_at"),
        (_far_future, "oauth2.refresh_token_expires_at"),
    ],
)
def test_a_session_that_cannot_be_used_names_the_field_not_the_value(
    damage: Callable[[pb.GarminSession], None], field: str
) -> None:
    session = tokens_to_proto(TOKENS)
    damage(session)
    with pytest.raises(MalformedSession) as raised:
        tokens_from_proto(session)
    assert isinstance(raised.value, ValueError)
    assert raised.value.field == field
    for secret in ("o1-secret", "access-1", "refresh-1"):
        assert secret not in str(raised.value)


DI_TOKENS = GarminTokens(
    oauth1=None,
    oauth2=dataclasses.replace(TOKENS.oauth2, refresh_token_expires_at=None),
    domain="garmin.cn",
    di_client_id="GARMIN_CONNECT_MOBILE_ANDROID_DI_2025Q2",
)


def test_a_di_session_survives_the_round_trip_without_oauth1() -> None:
    session = tokens_to_proto(DI_TOKENS)
    assert not session.HasField("oauth1")
    assert session.kind == pb.SESSION_KIND_DI_OAUTH2
    assert tokens_from_proto(session) == DI_TOKENS
    assert tokens_from_proto(session).kind is SessionKind.DI_OAUTH2


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda s: s.ClearField("di_client_id"), "di_client_id"),
        (lambda s: s.oauth1.CopyFrom(tokens_to_proto(TOKENS).oauth1), "oauth1"),
        (lambda s: setattr(s, "kind", 7), "kind"),
    ],
)
def test_a_malformed_di_session_names_the_field(
    change: Callable[[pb.GarminSession], object], field: str
) -> None:
    session = tokens_to_proto(DI_TOKENS)
    change(session)
    with pytest.raises(MalformedSession) as raised:
        tokens_from_proto(session)
    assert raised.value.field == field
