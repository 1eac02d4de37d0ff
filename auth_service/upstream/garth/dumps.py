"""garth's ``Client.dumps()`` strings (base64 of the [oauth1, oauth2] JSON pair) to our tokens
and back: what ImportSession accepts from users who already have a garth session."""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any

from auth_service.domain.validation import (
    CREDENTIAL_RULE,
    TOKEN_TYPE_RULE,
    is_credential,
    is_token_type,
)
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

    Raises ValueError, with a message that never quotes the input, on anything malformed.
    """
    oauth1_raw, oauth2_raw = _decode_dumps(s)
    try:
        oauth1 = GarthOAuth1Token(**oauth1_raw)
    except (TypeError, ValueError):
        raise ValueError("garth session string: the OAuth1 token is malformed") from None
    try:
        oauth2 = GarthOAuth2Token(**oauth2_raw)
    except (TypeError, ValueError):
        raise ValueError("garth session string: the OAuth2 token is malformed") from None
    if not (oauth1.oauth_token and oauth1.oauth_token_secret and oauth2.access_token):
        raise ValueError("garth session string: a token is empty")
    credentials = (oauth1.oauth_token, oauth1.oauth_token_secret, oauth2.access_token)
    if not all(isinstance(value, str) and is_credential(value) for value in credentials) or (
        oauth2.refresh_token and not is_credential(str(oauth2.refresh_token))
    ):
        # The same rule as every other import: headers carry these, so visible ASCII only.
        raise ValueError(f"garth session string: a token {CREDENTIAL_RULE}")
    if not (isinstance(oauth2.token_type, str) and is_token_type(oauth2.token_type)):
        # It opens the Authorization header the access token is sent in.
        raise ValueError(f"garth session string: the OAuth2 token_type {TOKEN_TYPE_RULE}")
    domain = oauth1.domain or DEFAULT_DOMAIN
    if domain not in DOMAINS:
        # Garth builds https://connectapi.{domain}/...: any other value would send this
        # session's tokens (and our OAuth consumer) to a host the importer chose.
        raise ValueError(
            f"garth session string: the domain must be one of {', '.join(sorted(DOMAINS))}"
        )
    try:
        return tokens_from_garth(oauth1, oauth2, domain)
    except (OverflowError, OSError, ValueError):
        raise ValueError("garth session string: an expiry is out of range") from None


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
