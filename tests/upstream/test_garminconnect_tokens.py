"""python-garminconnect's garmin_tokens.json to our tokens: the real shape (from the
emulator) and malformed ones, refused with messages that never quote the input."""

from __future__ import annotations

import base64
import json

import pytest

from auth_service.domain.models import SessionKind
from auth_service.upstream.di.garminconnect import tokens_from_garminconnect
from garmin_emulator import KNOWN_DI_CLIENT_IDS, GarminEmulator

from .di_http import jwt_payload

EMAIL = "file@example.com"


def _jwt(payload: object) -> str:
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJIUzI1NiJ9.{body}.c2lnbmF0dXJl"


def test_the_real_shape_becomes_a_di_session_with_an_unknown_refresh_expiry(
    emulator: GarminEmulator,
) -> None:
    emulator.add_user(EMAIL, "pw")
    file = emulator.garminconnect_tokens(EMAIL, client_id=KNOWN_DI_CLIENT_IDS[1])
    tokens = tokens_from_garminconnect(json.dumps(file))

    assert tokens.kind is SessionKind.DI_OAUTH2
    assert tokens.di_client_id == KNOWN_DI_CLIENT_IDS[1]
    assert tokens.oauth2.access_token == file["di_token"]
    assert tokens.oauth2.refresh_token == file["di_refresh_token"]
    assert tokens.oauth2.refresh_token_expires_at is None
    assert int(tokens.oauth2.expires_at.timestamp()) == jwt_payload(file["di_token"])["exp"]
    assert tokens.domain == "garmin.com"


GOOD = {"di_token": _jwt({"exp": 2_000_000_000, "client_id": "C"}), "di_refresh_token": "r"}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        json.dumps({**GOOD}),  # no client id
        json.dumps({**GOOD, "di_client_id": "C", "di_refresh_token": ""}),
        json.dumps({**GOOD, "di_client_id": "lower case"}),
        json.dumps({**GOOD, "di_client_id": "C", "di_token": "opaque-not-a-jwt"}),
        json.dumps({**GOOD, "di_client_id": "C", "di_token": _jwt({"client_id": "C"})}),
        json.dumps({**GOOD, "di_client_id": "C", "di_token": _jwt({"exp": "soon"})}),
        json.dumps({**GOOD, "di_client_id": "C", "di_token": _jwt({"exp": 10**20})}),
        json.dumps({**GOOD, "di_client_id": "OTHER"}),  # the JWT names client C
        json.dumps({**GOOD, "di_client_id": "C", "di_token": _jwt([1, 2])}),
        json.dumps({**GOOD, "di_client_id": "C", "di_token": _jwt({"exp": 1, "scope": [1, 2]})}),
        json.dumps({**GOOD, "di_client_id": "C", "di_token": _jwt({"exp": 1, "scope": {}})}),
    ],
)
def test_malformed_files_are_refused_without_quoting_them(text: str) -> None:
    with pytest.raises(ValueError, match=r"garmin_tokens\.json") as refused:
        tokens_from_garminconnect(text)
    assert 'r"' not in str(refused.value)
    assert GOOD["di_token"] not in str(refused.value)


def test_a_garmin_cn_token_refreshes_in_china() -> None:
    token = _jwt({"exp": 2_000_000_000, "client_id": "C", "iss": "https://diauth.garmin.cn"})
    text = json.dumps({"di_token": token, "di_refresh_token": "r", "di_client_id": "C"})
    assert tokens_from_garminconnect(text).domain == "garmin.cn"


@pytest.mark.parametrize(
    ("claim", "scope"),
    [(["CONNECT_READ", "CONNECT_WRITE"], "CONNECT_READ CONNECT_WRITE"), ("A B", "A B"), (None, "")],
)
def test_the_scope_claim_becomes_one_text(claim: object, scope: str) -> None:
    token = _jwt({"exp": 2_000_000_000, "client_id": "C", "scope": claim})
    text = json.dumps({"di_token": token, "di_refresh_token": "r", "di_client_id": "C"})
    assert tokens_from_garminconnect(text).oauth2.scope == scope
