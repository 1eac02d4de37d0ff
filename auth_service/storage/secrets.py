"""Serialising secrets for encryption at rest. Only this module turns tokens into bytes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from auth_service.crypto import (
    VERSION_BOUND_BLOB,
    Keyring,
    challenge_aad,
    session_aad,
    stored_session_aad,
)
from auth_service.domain.models import (
    GarminTokens,
    OAuth1Token,
    OAuth2Token,
    PendingMfa,
    SessionKind,
)


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def tokens_to_json(tokens: GarminTokens) -> dict[str, Any]:
    o1, o2 = tokens.oauth1, tokens.oauth2
    return {
        "oauth1": None
        if o1 is None
        else {
            "oauth_token": o1.oauth_token,
            "oauth_token_secret": o1.oauth_token_secret,
            "mfa_token": o1.mfa_token,
            "mfa_expires_at": _ts(o1.mfa_expires_at),
        },
        "oauth2": {
            "scope": o2.scope,
            "jti": o2.jti,
            "token_type": o2.token_type,
            "access_token": o2.access_token,
            "refresh_token": o2.refresh_token,
            "expires_at": _ts(o2.expires_at),
            "refresh_token_expires_at": _ts(o2.refresh_token_expires_at),
        },
        "domain": tokens.domain,
        "di_client_id": tokens.di_client_id,
        "refresh_token_lifetime_seconds": tokens.refresh_token_lifetime_seconds,
    }


def tokens_from_json(data: dict[str, Any]) -> GarminTokens:
    # Sessions stored before DI sessions existed have no di_client_id: they are garth's.
    o1, o2 = data.get("oauth1"), data["oauth2"]
    expires_at = _dt(o2["expires_at"])
    if expires_at is None:
        raise ValueError("stored session lacks its access token's expiry")
    return GarminTokens(
        oauth1=None
        if o1 is None
        else OAuth1Token(
            oauth_token=o1["oauth_token"],
            oauth_token_secret=o1["oauth_token_secret"],
            mfa_token=o1.get("mfa_token"),
            mfa_expires_at=_dt(o1.get("mfa_expires_at")),
        ),
        oauth2=OAuth2Token(
            scope=o2["scope"],
            jti=o2["jti"],
            token_type=o2["token_type"],
            access_token=o2["access_token"],
            refresh_token=o2["refresh_token"],
            expires_at=expires_at,
            refresh_token_expires_at=_dt(o2.get("refresh_token_expires_at")),
        ),
        domain=data.get("domain") or "garmin.com",
        di_client_id=data.get("di_client_id"),
        refresh_token_lifetime_seconds=data.get("refresh_token_lifetime_seconds"),
    )


class SecretBox:
    """Seals and opens the secrets stored in the database, each bound to its row."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    def seal_tokens(self, user_id: str, session_version: int, tokens: GarminTokens) -> bytes:
        """Seal for the user's row at `session_version`: the version the row will hold once
        the blob is stored (issue 14: an older blob of the row cannot be put back)."""
        plaintext = json.dumps(tokens_to_json(tokens), separators=(",", ":")).encode()
        return self.keyring.encrypt(
            plaintext, session_aad(user_id, session_version), blob_format=VERSION_BOUND_BLOB
        )

    def open_tokens(self, user_id: str, session_version: int, blob: bytes) -> GarminTokens:
        """Open the blob the user's row holds at `session_version`."""
        aad = stored_session_aad(user_id, session_version, blob)
        return tokens_from_json(json.loads(self.keyring.decrypt(blob, aad)))

    def seal_pending(self, challenge_id_sha256: str, user_id: str, pending: PendingMfa) -> bytes:
        plaintext = json.dumps(
            {
                "cookies": pending.cookies,
                "login_params": pending.login_params,
                "mfa_method": pending.mfa_method,
                "domain": pending.domain,
                "flow": pending.flow.value,
            },
            separators=(",", ":"),
        ).encode()
        return self.keyring.encrypt(plaintext, challenge_aad(challenge_id_sha256, user_id))

    def open_pending(self, challenge_id_sha256: str, user_id: str, blob: bytes) -> PendingMfa:
        data = json.loads(self.keyring.decrypt(blob, challenge_aad(challenge_id_sha256, user_id)))
        return PendingMfa(
            cookies=data["cookies"],
            login_params=data["login_params"],
            mfa_method=data["mfa_method"],
            domain=data["domain"],
            # Challenges stored before DI logins existed name no flow: they are garth's.
            flow=SessionKind(data.get("flow", SessionKind.GARTH.value)),
        )
