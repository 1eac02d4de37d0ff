"""diauth's token endpoint (diauth.garmin.cn for garmin.cn accounts): a service ticket becomes
a token pair, a refresh token becomes a new pair (rotation: the old refresh token dies).

Clients authenticate with HTTP Basic "<client_id>:". Requests go through garmin_client's
transport (routing, timeout, observer); it never repeats a POST that may have reached Garmin,
and this module never does either: a repeated rotation would present a dead refresh token.

What Garmin's answers mean:
* 200 -> the pair; the access expiry from ``expires_in`` (else the JWT's ``exp``), the refresh
  expiry from ``refresh_token_expires_in`` (else now + the lifetime Garmin last stated for the
  session, else the configured default; configured to keep: the old token's expiry, unless
  that has passed). A refresh's 200 whose refresh token is readable but whose access token is
  not still keeps the rotation: the old access token comes back marked expired (now), and
  the refresher stores the pair but hands that token to nobody.
* 400 ``invalid_grant`` -> on a ticket ServiceTicketRejected, on a refresh GarminSessionRejected.
* 401 ``invalid_client`` on a ticket -> ClientIdRefused (the provider decides what is next).
* 429 -> GarminRateLimited (a Retry-After date measured on the given clock, the service's);
  5xx, other answers, timeouts -> GarminUnavailable.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from http import HTTPStatus
from typing import Any, Final

import requests

from auth_service.domain.clock import Clock
from auth_service.domain.errors import (
    GarminRateLimited,
    GarminSessionRejected,
    GarminUnavailable,
    ServiceTicketRejected,
    UpstreamError,
)
from auth_service.domain.garmin_limits import GarminEndpoint
from auth_service.domain.jwt_payload import jwt_payload
from auth_service.domain.models import GarminTokens, OAuth2Token
from auth_service.domain.policies import DiSettings
from auth_service.domain.validation import check_token_text, is_credential, is_token_type
from garmin_client.answer_cap import MAX_AUTH_ANSWER_BYTES, AnswerTooLarge
from garmin_client.answers import retry_after_seconds
from garmin_client.connect_api import APP_HEADERS
from garmin_client.http_session import upstream_session
from garmin_client.observe import RequestObserver
from garmin_client.settings import UpstreamSettings
from garmin_client.transport import UpstreamTransport

log = logging.getLogger(__name__)

DI_TOKEN_PATH: Final = "/di-oauth2-service/oauth/token"  # noqa: S105 (a path)
SERVICE_TICKET_GRANT: Final = (
    "https://connectapi.garmin.com/di-oauth2-service/oauth/grant/service_ticket"
)
REFRESH_TOKEN_GRANT: Final = "refresh_token"  # noqa: S105 (a grant type)
# A stated lifetime longer than this is unreadable (10 years; larger ones overflow dates).
MAX_STATED_SECONDS: Final = 10 * 365 * 86400
# Reported DI access lifetimes range from 4 h to 29 h (shared facts file): when an answer
# states none we can read, the shortest one, so the token is refreshed early, never late.
SHORTEST_ACCESS_LIFETIME: Final = timedelta(hours=4)


class ClientIdRefused(Exception):
    """Garmin refused the client id a ticket was presented with (not a domain error: the
    provider tries the next id or gives up, as configured)."""


@dataclass(frozen=True)
class _Answer:
    status: int
    payload: Any
    retry_after: str | None
    # The body's start, lowercased: what a refusal is recognised by when its code is not.
    text: str = ""


# The phrase Garmin's refusal of a service ticket carries (shared facts file).
INVALID_TICKET = "invalid service ticket provided"
# Characters of an answer's body kept to look for it.
_TEXT_KEPT = 4096


def _basic(client_id: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:".encode()).decode("ascii")


def _error_code(answer: _Answer) -> str | None:
    error = answer.payload.get("error") if isinstance(answer.payload, dict) else None
    return error if isinstance(error, str) else None


def _refuses_the_ticket(answer: _Answer) -> bool:
    """Garmin's verdict on the ticket itself. What the facts record is the body's phrase
    "invalid service ticket provided", not the status or error code (invalid_grant is what
    OAuth gives a bad grant); a 429, a 5xx or any other answer is no verdict."""
    if answer.status == HTTPStatus.BAD_REQUEST and _error_code(answer) == "invalid_grant":
        return True
    refusal = HTTPStatus.BAD_REQUEST <= answer.status < HTTPStatus.INTERNAL_SERVER_ERROR
    return (
        refusal and answer.status != HTTPStatus.TOO_MANY_REQUESTS and INVALID_TICKET in answer.text
    )


class TokenEndpoint:
    """Ticket exchanges and refreshes against diauth.<domain>."""

    def __init__(
        self,
        upstream: UpstreamSettings,
        settings: DiSettings,
        clock: Clock,
        observer: RequestObserver | None,
    ) -> None:
        self._upstream = upstream
        self._settings = settings
        self._clock = clock
        self._observer = observer

    def exchange_ticket(
        self, ticket: str, service_url: str, client_id: str, domain: str
    ) -> GarminTokens:
        """Raises ClientIdRefused, ServiceTicketRejected, GarminRateLimited, GarminUnavailable."""
        answer = self._post(
            domain,
            client_id,
            {
                "client_id": client_id,
                "service_ticket": ticket,
                "grant_type": SERVICE_TICKET_GRANT,
                "service_url": service_url,
            },
            "ticket exchange",
        )
        if answer.status == HTTPStatus.OK:
            return self._tokens(answer, client_id, domain, previous=None)
        # The phrase first: its status and error code are uncertain, and a refused ticket
        # answered 401 invalid_client must not read as our client id refused (an operator
        # alarm, and with on_refused=next the dead ticket sent with every id).
        if _refuses_the_ticket(answer):
            raise ServiceTicketRejected(
                "Garmin refused the service ticket (used, expired or for another service URL)"
            )
        if answer.status == HTTPStatus.UNAUTHORIZED and _error_code(answer) == "invalid_client":
            raise ClientIdRefused(client_id)
        raise self._failure(answer, "ticket exchange")

    def refresh(self, tokens: GarminTokens) -> GarminTokens:
        """The rotated pair, with the session's own client id and domain. Raises
        GarminSessionRejected (invalid_grant), GarminRateLimited, GarminUnavailable."""
        client_id = tokens.di_client_id
        if client_id is None:
            raise ValueError("a garth session has no DI refresh token")
        answer = self._post(
            tokens.domain,
            client_id,
            {
                "grant_type": REFRESH_TOKEN_GRANT,
                "client_id": client_id,
                "refresh_token": tokens.oauth2.refresh_token,
            },
            "refresh",
        )
        if answer.status == HTTPStatus.OK:
            return self._tokens(answer, client_id, tokens.domain, previous=tokens)
        if answer.status == HTTPStatus.BAD_REQUEST and _error_code(answer) == "invalid_grant":
            log.info("garmin refresh refused the refresh token (invalid_grant)")
            raise GarminSessionRejected("Garmin refused the refresh token (invalid_grant)")
        if answer.status == HTTPStatus.UNAUTHORIZED:
            # The client id is refused, not the session: never end a session over our settings.
            log.error("Garmin refused the session's DI client id %s on refresh", client_id)
        raise self._failure(answer, "refresh")

    def _post(self, domain: str, client_id: str, form: dict[str, str], step: str) -> _Answer:
        headers = {
            **APP_HEADERS,
            "Authorization": _basic(client_id),
            "Accept": "application/json",
        }
        # Capped: the answer is a few KB, and read whole (decompressed) it could take the
        # replica's memory, with every rotation it holds unstored.
        transport = UpstreamTransport(
            self._upstream, self._observer, max_answer_bytes=MAX_AUTH_ANSWER_BYTES
        )
        with upstream_session() as session:
            session.mount("https://", transport)
            try:
                response = session.post(
                    f"https://diauth.{domain}{DI_TOKEN_PATH}",
                    data=form,
                    headers=headers,
                    timeout=self._upstream.timeout_seconds,
                    allow_redirects=False,
                )
            except requests.Timeout:
                raise GarminUnavailable(f"Garmin did not answer in time ({step})") from None
            except requests.RequestException:
                raise GarminUnavailable(f"Garmin could not be reached ({step})") from None
            except AnswerTooLarge as exc:
                raise _too_large(exc, step) from None
            try:
                payload = response.json()
            except (ValueError, RecursionError):  # RecursionError: nested past the stack
                payload = None
            return _Answer(
                response.status_code,
                payload,
                response.headers.get("Retry-After"),
                # The start only, decoded alone: the phrase looked for is ASCII.
                response.content[:_TEXT_KEPT].decode("utf-8", "replace").lower(),
            )

    def _failure(self, answer: _Answer, step: str) -> UpstreamError:
        if answer.status == HTTPStatus.TOO_MANY_REQUESTS:
            error: UpstreamError = GarminRateLimited(
                f"Garmin is rate limiting ({step}, HTTP 429)",
                # A date is measured on our clock: the service keeps the cooldown on it.
                retry_after_seconds(answer.retry_after, self._clock.now()),
                GarminEndpoint.DI_TOKEN,
            )
        else:
            error = GarminUnavailable(f"Garmin answered HTTP {answer.status} ({step})")
        log.warning("garmin %s failed: %s (HTTP %d)", step, type(error).__name__, answer.status)
        return error

    def _tokens(
        self, answer: _Answer, client_id: str, domain: str, *, previous: GarminTokens | None
    ) -> GarminTokens:
        payload = answer.payload
        if not isinstance(payload, dict):
            raise GarminUnavailable("Garmin answered something unreadable (token endpoint)")
        now = self._clock.now()
        # Texts no request header could carry are no tokens (as ImportSession refuses them):
        # stored, they would fail every use of the session, and its holder's report of it.
        refresh_token = _credential(payload, "refresh_token")
        access_token = _credential(payload, "access_token")
        if refresh_token is None:
            if previous is not None and _text(payload, "refresh_token") is not None:
                # Garmin rotated (the old token is dead), into a token no request can carry:
                # the session ends at its next refresh. Loud, as a lost rotation is.
                log.error(
                    "garmin refresh answered a refresh token no request header can carry; the "
                    "session will be refused at its next refresh"
                )
            raise GarminUnavailable("Garmin answered something unreadable (token endpoint)")
        # From here on the pair is Garmin's answer, and on a refresh the old refresh token
        # is already dead: an optional field we cannot read must never make us drop it.
        if access_token is not None:
            expires_at = _access_expiry(payload, access_token, now)
        elif previous is not None:
            # Not even the access token: the new refresh token is kept all the same, with the
            # old access token marked expired, so the session is stored and its next use
            # refreshes with the live refresh token (the refresher answers its caller
            # GARMIN_UNAVAILABLE meanwhile, never this access token as a fresh one).
            log.warning(
                "garmin refresh answered a new refresh token without a readable access "
                "token; keeping the rotation, its access token marked expired"
            )
            access_token, expires_at = previous.oauth2.access_token, now
        else:
            # A ticket exchange: no refresh token of ours died, and a session without an
            # access token is no sign-in.
            raise GarminUnavailable("Garmin answered something unreadable (token endpoint)")
        lifetime = _stated_seconds(payload.get("refresh_token_expires_in"))
        known = lifetime or (previous.refresh_token_lifetime_seconds if previous else None)
        refresh_expires_at = now + timedelta(
            seconds=known or self._settings.refresh_lifetime_seconds
        )
        kept = previous.oauth2.refresh_token_expires_at if previous else None
        if (
            lifetime is None
            and kept is not None
            and kept > now
            and not self._settings.rotation_restarts_refresh_expiry
        ):
            # Configured: a rotation hands the old token's expiry on to the new one. A kept
            # expiry already past when Garmin accepts the refresh disproves that for this
            # session (its token outlived it): then the lifetime restarts, as above, or the
            # session would stay due at every grant and keep-alive pass for good.
            refresh_expires_at = kept
        return GarminTokens(
            oauth1=None,
            oauth2=OAuth2Token(
                scope=_token_text(payload, "scope") or "",
                jti=_token_text(payload, "jti") or "",
                token_type=_token_type(payload) or "bearer",
                access_token=access_token,
                refresh_token=refresh_token,
                expires_at=expires_at,
                refresh_token_expires_at=refresh_expires_at,
            ),
            domain=domain,
            di_client_id=client_id,
            refresh_token_lifetime_seconds=known,
        )


def _too_large(exc: AnswerTooLarge, step: str) -> GarminUnavailable:
    """An answer past MAX_AUTH_ANSWER_BYTES, not read. On a refresh answered 200 that cannot
    be helped, but it is loud: Garmin rotated, the new refresh token is in the part not read,
    and the session's next refresh presents the dead one (invalid_grant)."""
    if step == "refresh" and exc.status == HTTPStatus.OK:
        log.error(
            "garmin refresh answered HTTP 200 with a body %s, not read: the refresh token it "
            "rotated to is lost, and the session's next refresh will be refused",
            exc,
        )
    else:
        log.warning("garmin %s answered HTTP %s with a body %s, not read", step, exc.status, exc)
    return GarminUnavailable(f"Garmin's answer was {exc}, not read ({step})")


def _access_expiry(payload: dict[str, Any], access_token: str, now: datetime) -> datetime:
    """The earlier of `expires_in` and the JWT's `exp` (Garmin's API judges the token by its
    `exp`: a grant must not hand out a token that died before the answer said), either alone
    when the other is unreadable, else the shortest access lifetime reported."""
    stated = _stated_seconds(payload.get("expires_in"))
    candidates = [_jwt_expiry(access_token, now)]
    if stated is not None:
        candidates.append(now + timedelta(seconds=stated))
    readable = [expires_at for expires_at in candidates if expires_at is not None]
    if readable:
        return min(readable)
    log.warning("garmin token answer: no readable access expiry; assuming the shortest known")
    return now + SHORTEST_ACCESS_LIFETIME


def _jwt_expiry(access_token: str, now: datetime) -> datetime | None:
    """The access token's own `exp`, if it is readable and ahead of `now`."""
    try:
        exp = jwt_payload(access_token)["exp"]
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            expires_at = datetime.fromtimestamp(exp, now.tzinfo)
            if now < expires_at <= now + timedelta(seconds=MAX_STATED_SECONDS):
                return expires_at
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        pass
    return None


def _text(payload: dict[str, Any], name: str) -> str | None:
    """A non-empty text field of the answer, or None when missing or of another type."""
    value = payload.get(name)
    return value if isinstance(value, str) and value else None


def _credential(payload: dict[str, Any], name: str) -> str | None:
    """A token an HTTP header can carry (validation.is_credential), or None."""
    value = _text(payload, name)
    return value if value is not None and is_credential(value) else None


def _token_type(payload: dict[str, Any]) -> str | None:
    """The token type an Authorization header can open with, or None (then "bearer")."""
    value = _text(payload, "token_type")
    return value if value is not None and is_token_type(value) else None


def _token_text(payload: dict[str, Any], name: str) -> str | None:
    """Scope or jti as the service stores them (printable, bounded), or None (then empty):
    optional texts, which must not cost a sign-in or a rotation."""
    value = _text(payload, name)
    return value if value is not None and not check_token_text(name, value, name) else None


def _stated_seconds(value: object) -> int | None:
    """A lifetime Garmin stated: a positive number of seconds (a numeric string too) up to
    MAX_STATED_SECONDS; None when left out or unreadable, so the caller falls back."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not 0 < value <= MAX_STATED_SECONDS:  # also false for NaN
        return None
    # A fraction under a second is no lifetime either (it would read as "expired now").
    return int(value) or None
