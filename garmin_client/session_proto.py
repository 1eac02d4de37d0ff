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
from garmin_client.tokens import GarminTokens, OAuth1Token, OAuth2Token

DOMAINS: Final = frozenset({"garmin.com", "garmin.cn"})
# The text fields of each token that no request to Garmin can do without.
OAUTH1_TEXT: Final = ("oauth_token", "oauth_token_secret")
OAUTH2_TEXT: Final = ("scope", "jti", "token_type", "access_token", "refresh_token")
OAUTH2_TIMES: Final = ("expires_at", "refresh_token_expires_at")

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


def tokens_to_proto(tokens: GarminTokens) -> pb.GarminSession:
    o1, o2 = tokens.oauth1, tokens.oauth2
    return pb.GarminSession(
        oauth1=pb.OAuth1Token(
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
    )


def tokens_from_proto(session: pb.GarminSession) -> GarminTokens:
    """The tokens of a session; MalformedSession names the first field that cannot be used."""
    for part in ("oauth1", "oauth2"):
        if not session.HasField(part):
            raise MalformedSession(part, "is required")
    if session.domain and session.domain not in DOMAINS:
        raise MalformedSession("domain", f"must be one of {sorted(DOMAINS)}")
    o1, o2 = session.oauth1, session.oauth2
    for part, message, names in (("oauth1", o1, OAUTH1_TEXT), ("oauth2", o2, OAUTH2_TEXT)):
        for name in names:
            if not getattr(message, name):
                raise MalformedSession(f"{part}.{name}", "is required")
    for name in OAUTH2_TIMES:
        if not o2.HasField(name):
            raise MalformedSession(f"oauth2.{name}", "is required")
    mfa_expires_at = (
        _datetime(o1.mfa_expires_at, "oauth1.mfa_expires_at")
        if o1.HasField("mfa_expires_at")
        else None
    )
    return GarminTokens(
        oauth1=OAuth1Token(
            oauth_token=o1.oauth_token,
            oauth_token_secret=o1.oauth_token_secret,
            mfa_token=o1.mfa_token or None,
            mfa_expires_at=mfa_expires_at,
        ),
        oauth2=OAuth2Token(
            scope=o2.scope,
            jti=o2.jti,
            token_type=o2.token_type,
            access_token=o2.access_token,
            refresh_token=o2.refresh_token,
            expires_at=_datetime(o2.expires_at, "oauth2.expires_at"),
            refresh_token_expires_at=_datetime(
                o2.refresh_token_expires_at, "oauth2.refresh_token_expires_at"
            ),
        ),
        domain=session.domain or "garmin.com",
    )


def _datetime(message: timestamp_pb2.Timestamp, field: str) -> datetime:
    if not timestamp_in_range(message):
        raise MalformedSession(field, "is out of range")
    return message.ToDatetime(tzinfo=UTC)
