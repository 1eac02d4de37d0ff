"""Our token values (garmin_client.tokens) to garth's token objects and back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from auth_service.upstream.garth.isolation import GarthOAuth1Token, GarthOAuth2Token
from garmin_client.errors import Unavailable
from garmin_client.tokens import GarminTokens, OAuth1Token, OAuth2Token


def _as_utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    # garth parses Garmin's "2024-08-02 05:56:10.000" into a naive datetime; Garmin means UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def oauth1_from_garth(token: GarthOAuth1Token) -> OAuth1Token:
    return OAuth1Token(
        oauth_token=token.oauth_token,
        oauth_token_secret=token.oauth_token_secret,
        mfa_token=token.mfa_token,
        mfa_expires_at=_as_utc(token.mfa_expiration_timestamp),
    )


def oauth1_to_garth(token: OAuth1Token, domain: str) -> GarthOAuth1Token:
    return GarthOAuth1Token(
        oauth_token=token.oauth_token,
        oauth_token_secret=token.oauth_token_secret,
        mfa_token=token.mfa_token,
        mfa_expiration_timestamp=token.mfa_expires_at,
        domain=domain,
    )


def oauth2_from_garth(token: GarthOAuth2Token, issued_at: datetime | None = None) -> OAuth2Token:
    """Ours of garth's token. `issued_at`: when Garmin issued it, on the service's clock (the
    database's, every expiry decision's): its lifetimes count from then. garth counts them from
    this machine's clock, which may run hours off; without `issued_at` (a stored token read
    back) garth's expiries are kept as they are."""
    if issued_at is None:
        expires_at = datetime.fromtimestamp(token.expires_at, tz=UTC)
        refresh_expires_at = datetime.fromtimestamp(token.refresh_token_expires_at, tz=UTC)
    else:
        # Whole seconds, as garth keeps them: a round trip through garth changes nothing.
        issued_at = issued_at.replace(microsecond=0)
        expires_at = issued_at + timedelta(seconds=token.expires_in)
        refresh_expires_at = issued_at + timedelta(seconds=token.refresh_token_expires_in)
    return OAuth2Token(
        scope=token.scope,
        jti=token.jti,
        token_type=token.token_type,
        access_token=token.access_token,
        refresh_token=token.refresh_token,
        expires_at=expires_at,
        refresh_token_expires_at=refresh_expires_at,
    )


def oauth2_to_garth(token: OAuth2Token, now: float) -> GarthOAuth2Token:
    expires_at = int(token.expires_at.timestamp())
    if token.refresh_token_expires_at is None:
        raise ValueError("a garth OAuth2 token always has a refresh expiry")
    refresh_expires_at = int(token.refresh_token_expires_at.timestamp())
    # garth keeps the original lifetimes in *_expires_in; only *_expires_at drives its
    # decisions. We keep no lifetime, so the remaining one stands in for it.
    return GarthOAuth2Token(
        scope=token.scope,
        jti=token.jti,
        token_type=token.token_type,
        access_token=token.access_token,
        refresh_token=token.refresh_token,
        expires_in=max(0, int(expires_at - now)),
        expires_at=expires_at,
        refresh_token_expires_in=max(0, int(refresh_expires_at - now)),
        refresh_token_expires_at=refresh_expires_at,
    )


def tokens_from_garth(
    oauth1: object, oauth2: object, domain: str, issued_at: datetime | None = None
) -> GarminTokens:
    """Ours of garth's pair (`issued_at`: as for oauth2_from_garth)."""
    if not isinstance(oauth1, GarthOAuth1Token) or not isinstance(oauth2, GarthOAuth2Token):
        raise Unavailable("Garmin's answer did not include the tokens")
    return GarminTokens(
        oauth1=oauth1_from_garth(oauth1),
        oauth2=oauth2_from_garth(oauth2, issued_at),
        domain=domain,
    )


def bearer(token: OAuth2Token) -> str:
    """The Authorization header value, rendered as garth's str(OAuth2Token) does."""
    return f"{token.token_type.title()} {token.access_token}"
