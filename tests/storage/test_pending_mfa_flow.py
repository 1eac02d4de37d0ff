"""A pending MFA login remembers which sign-in started it, sealed with its cookies; challenges
stored before DI logins existed name no flow and finish with garth's."""

from __future__ import annotations

import json

from auth_service.crypto import Keyring, challenge_aad
from auth_service.domain.models import PendingMfa, SessionKind
from auth_service.storage.secrets import SecretBox


def test_the_flow_travels_with_the_sealed_cookies(keyring: Keyring) -> None:
    box = SecretBox(keyring)
    pending = PendingMfa(
        cookies=[{"name": "SESSION", "value": "s"}],
        login_params={"service": "https://mobile.integration.garmin.com/gcm/ios"},
        mfa_method="email",
        domain="garmin.com",
        flow=SessionKind.DI_OAUTH2,
    )
    sealed = box.seal_pending("digest", "ann", pending)
    assert box.open_pending("digest", "ann", sealed) == pending


def test_a_challenge_stored_before_di_logins_is_garths(keyring: Keyring) -> None:
    before = {"cookies": [], "login_params": {}, "mfa_method": "email", "domain": "garmin.com"}
    blob = keyring.encrypt(json.dumps(before).encode(), challenge_aad("digest", "ann"))
    assert SecretBox(keyring).open_pending("digest", "ann", blob).flow is SessionKind.GARTH
