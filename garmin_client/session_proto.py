"""Garmin tokens to and from the wire: ``GarminTokens`` <-> ``garmin_auth.v1.GarminSession``.

The service sends tokens this way when it grants a lease and reads them back from
ImportSession and ReportRefreshed; the worker reads the grant and sends refreshed tokens.
``tokens_from_proto`` refuses what no one could use (a missing part, an empty token, a time
out of range); the service layers its own input limits on top of it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from google.protobuf import timestamp_pb2

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_client.endpoints import DOMAINS
from garmin_client.tokens import GarminTokens, OAuth1Token, OAuth2Token, SessionKind

# The text fields of each token that no request to Garmin can do without. An OAuth2 token's
# scope and jti only describe it: a DI token answer or a token file's JWT may leave them out.
OAUTH1_TEXT: Final = ("oauth_token", "oauth_token_secret")
OAUTH2_TEXT: Final = ("token_type", "access_token", "refresh_token")

_NANOS_PER_SECOND: Final = 10**9
# Timestamps outside this range are refused rather than overflowing datetime.
_MIN_SECONDS: Final = int(datetime(1970, 1, 1, tzinfo=UTC).timestamp())
_MAX_SECONDS: Final = int(datetime(9999, 1, 1, tzinfo=UTC).timestamp())


class MalformedSession(ValueError):
    """A GarminSession that cannot be read as tokens. Names the field, never its value."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


def timestamp_in_range(message: timestamp_pb2.Timestamp) -> bool:
    return (
        _MIN_SECONDS <= message.seconds <= _MAX_SECONDS and 0 <= message.nanos < _NANOS_PER_SECOND
    )


KINDS: Final = {
    SessionKind.GARTH: pb.SESSION_KIND_GARTH,
    SessionKind.DI_OAUTH2: pb.SESSION_KIND_DI_OAUTH2,
}


def tokens_to_proto(tokens: GarminTokens) -> pb.GarminSession:
    o1, o2 = tokens.oauth1, tokens.oauth2
    return pb.GarminSession(
        oauth1=None
        if o1 is None
        else pb.OAuth1Token(
            oauth_token=o1.oauth_token,
            oauth_token_secret=o1.oauth_token_secret,
            mfa_token=o1.mfa_token or "",
            mfa_expires_at=o1.mfa_expires_at,
        ),
        oauth2=pb.OAuth2Token(
            scope=o2.scope,
            jti=o2.jti,
            token_type=o2.token_type,
            access_token=o2.access_token,
            refresh_token=o2.refresh_token,
            expires_at=o2.expires_at,
            refresh_token_expires_at=o2.refresh_token_expires_at,
        ),
        domain=tokens.domain,
        di_client_id=tokens.di_client_id or "",
        kind=KINDS[tokens.kind],
    )


def kind_of(session: pb.GarminSession) -> SessionKind:
    """The session's kind: as stated, else read from its fields (di_client_id means DI)."""
    if session.kind == pb.SESSION_KIND_DI_OAUTH2:
        return SessionKind.DI_OAUTH2
    if session.kind == pb.SESSION_KIND_GARTH:
        return SessionKind.GARTH
    if session.kind != pb.SESSION_KIND_UNSPECIFIED:
        raise MalformedSession("kind", "is not a known session kind")
    return SessionKind.DI_OAUTH2 if session.di_client_id else SessionKind.GARTH


def tokens_from_proto(session: pb.GarminSession) -> GarminTokens:
    """The tokens of a session; MalformedSession names the first field that cannot be used."""
    kind = kind_of(session)
    if not session.HasField("oauth2"):
        raise MalformedSession("oauth2", "is required")
    if session.domain and session.domain not in DOMAINS:
        raise MalformedSession("domain", f"must be one of {sorted(DOMAINS)}")
    o2 = session.oauth2
    for name in OAUTH2_TEXT:
        if not getattr(o2, name):
            raise MalformedSession(f"oauth2.{name}", "is required")
    if not o2.HasField("expires_at"):
        raise MalformedSession("oauth2.expires_at", "is required")
    refresh_expires_at = (
        _datetime(o2.refresh_token_expires_at, "oauth2.refresh_token_expires_at")
        if o2.HasField("refresh_token_expires_at")
        else None
    )
    if kind is SessionKind.DI_OAUTH2:
        oauth1, di_client_id = _di_parts(session)
    else:
        oauth1, di_client_id = _garth_parts(session), None
        if refresh_expires_at is None:
            raise MalformedSession("oauth2.refresh_token_expires_at", "is required")
    return GarminTokens(
        oauth1=oauth1,
        oauth2=OAuth2Token(
            scope=o2.scope,
            jti=o2.jti,
            token_type=o2.token_type,
            access_token=o2.access_token,
            refresh_token=o2.refresh_token,
            expires_at=_datetime(o2.expires_at, "oauth2.expires_at"),
            refresh_token_expires_at=refresh_expires_at,
        ),
        domain=session.domain or "garmin.com",
        di_client_id=di_client_id,
    )


def _garth_parts(session: pb.GarminSession) -> OAuth1Token:
    if not session.HasField("oauth1"):
        raise MalformedSession("oauth1", "is required for a garth session")
    if session.di_client_id:
        raise MalformedSession("di_client_id", "must be empty for a garth session")
    o1 = session.oauth1
    for name in OAUTH1_TEXT:
        if not getattr(o1, name):
            raise MalformedSession(f"oauth1.{name}", "is required")
    return OAuth1Token(
        oauth_token=o1.oauth_token,
        oauth_token_secret=o1.oauth_token_secret,
        mfa_token=o1.mfa_token or None,
        mfa_expires_at=(
            _datetime(o1.mfa_expires_at, "oauth1.mfa_expires_at")
            if o1.HasField("mfa_expires_at")
            else None
        ),
    )


def _di_parts(session: pb.GarminSession) -> tuple[None, str]:
    if session.HasField("oauth1"):
        raise MalformedSession("oauth1", "must be unset for a DI OAuth2 session")
    if not session.di_client_id:
        raise MalformedSession("di_client_id", "is required for a DI OAuth2 session")
    return None, session.di_client_id


def _datetime(message: timestamp_pb2.Timestamp, field: str) -> datetime:
    if not timestamp_in_range(message):
        raise MalformedSession(field, "is out of range")
    return message.ToDatetime(tzinfo=UTC)
