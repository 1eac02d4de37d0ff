"""The suite-wide log scan (tests/fixtures/logs.py) finds what it is meant to find."""

from __future__ import annotations

import logging

from garmin_emulator.emulator import GarminEmulator, every_secret_issued
from tests.fixtures.logs import RecordingHandler, leaked_secrets


def test_scan_finds_a_secret_in_a_message_an_extra_and_a_traceback() -> None:
    with GarminEmulator() as garmin:
        garmin.add_user("scan@example.com", "a-long-enough-password")
    handler = RecordingHandler()
    logger = logging.getLogger("tests.scan")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    # Kept away from the suite-wide recorder, which would (rightly) fail this test.
    logger.propagate = False
    try:
        logger.debug("password is %s", "a-long-enough-password")
        logger.info("call", extra={"user_id": "x-a-long-enough-password-x"})
        try:
            int("a-long-enough-password")
        except ValueError:
            logger.exception("failed")
        logger.info("nothing secret here")
    finally:
        logger.removeHandler(handler)
    assert "a-long-enough-password" in every_secret_issued()
    leaks = leaked_secrets(handler.texts, every_secret_issued())
    assert len(leaks) == 3
    assert all(leak.startswith("tests.scan: a 22-character secret") for leak in leaks)


def test_scan_finds_word_shaped_tokens_alone_and_glued_to_a_label() -> None:
    token = "eyJ" + "a1B2c3D4e5F6g7H8i9J0" * 2
    texts = [
        ("a", f"Authorization: Bearer {token}"),
        ("b", f"access_token={token}&x=1"),
        ("c", f'"oauth_token": "{token}"'),
        ("d", f"prefix{token}"),
        ("e", f"{token}suffix"),
        ("f", "eyJa1B2 nothing to see"),
    ]
    assert sorted(leak.split(":")[0] for leak in leaked_secrets(texts, {token})) == list("abcde")
