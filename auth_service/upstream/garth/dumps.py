"""garth's ``Client.dumps()`` strings (base64 of the [oauth1, oauth2] JSON pair) to our tokens
and back: what ImportSession accepts from users who already have a garth session."""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any

from auth_service.domain.validation import check_tokens
from auth_service.upstream.garth.isolation import GarthOAuth1Token, GarthOAuth2Token, garth_asdict
from auth_service.upstream.garth.tokens import oauth1_to_garth, oauth2_to_garth, tokens_from_garth
from garmin_client.endpoints import DEFAULT_DOMAIN, DOMAINS
from garmin_client.tokens import GarminTokens


def tokens_to_garth_dumps(tokens: GarminTokens) -> str:
    """The session as garth's ``Client.dumps()`` string."""
    pair = [
        garth_asdict(oauth1_to_garth(tokens.oauth1_token(), tokens.domain)),
        garth_asdict(oauth2_to_garth(tokens.oauth2, time.time())),
    ]
    return base64.b64encode(json.dumps(pair).encode()).decode()


def tokens_from_garth_dumps(s: str) -> GarminTokens:
    """Parse garth's ``Client.dumps()`` string.

    Raises ValueError, with a message that never quotes the input, on anything malformed and
    on any value the service refuses to store (domain.validation.check_tokens).
    """
    oauth1, oauth2 = _garth_pair(*_decode_dumps(s))
    try:
        tokens = tokens_from_garth(oauth1, oauth2, _domain_of(oauth1))
    except (OverflowError, OSError, ValueError):
        raise ValueError("garth session string: an expiry is out of range") from None
    # The limits of every other way a session comes in (the `session` source, ReportRefreshed):
    # what is stored here is leased to worker_full holders, who must be able to report it back.
    problems = check_tokens(tokens)
    if problems:
        named = "; ".join(f"{problem.field} {problem.description}" for problem in problems)
        raise ValueError(f"garth session string: {named}")
    return tokens


def _garth_pair(
    oauth1_raw: dict[str, Any], oauth2_raw: dict[str, Any]
) -> tuple[GarthOAuth1Token, GarthOAuth2Token]:
    try:
        oauth1 = GarthOAuth1Token(**oauth1_raw)
    except (TypeError, ValueError):
        raise ValueError("garth session string: the OAuth1 token is malformed") from None
    try:
        oauth2 = GarthOAuth2Token(**oauth2_raw)
    except (TypeError, ValueError):
        raise ValueError("garth session string: the OAuth2 token is malformed") from None
    return oauth1, oauth2


def _domain_of(oauth1: GarthOAuth1Token) -> str:
    domain = oauth1.domain or DEFAULT_DOMAIN
    if domain not in DOMAINS:
        # Garth builds https://connectapi.{domain}/...: any other value would send this
        # session's tokens (and our OAuth consumer) to a host the importer chose.
        raise ValueError(
            f"garth session string: the domain must be one of {', '.join(sorted(DOMAINS))}"
        )
    return domain


def _decode_dumps(s: str) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        raw = base64.b64decode(s.strip(), validate=True)
    except (binascii.Error, ValueError, AttributeError):
        raise ValueError("garth session string: not base64") from None
    try:
        pair = json.loads(raw)
    # RecursionError: JSON nested deeper than the parser's stack (a few kB of "[").
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError("garth session string: not JSON") from None
    if (
        not isinstance(pair, list)
        or len(pair) != len(("oauth1", "oauth2"))
        or not all(isinstance(item, dict) for item in pair)
    ):
        raise ValueError("garth session string: expected a list of two token objects")
    return pair[0], pair[1]
