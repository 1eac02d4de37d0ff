"""The suite-wide log scan (tests/fixtures/logs.py) finds what it is meant to find, in the
secrets of every emulator the tests start."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import requests

from garmin_emulator import SIGN_IN_PATH
from tests.fixtures.emulators import every_secret_issued, scanned_emulator
from tests.fixtures.logs import RecordingHandler, leaked_secrets

TESTS = Path(__file__).resolve().parent
FACTORY = TESTS / "fixtures" / "emulators.py"


def test_every_emulator_the_tests_make_reports_its_secrets() -> None:
    """An emulator built directly would keep its secrets from the scans."""
    direct = [
        str(path.relative_to(TESTS))
        for path in sorted(TESTS.rglob("*.py"))
        if path != FACTORY and re.search(r"\bGarminEmulator\(", path.read_text(encoding="utf-8"))
    ]
    assert direct == [], "build emulators with tests.fixtures.emulators.scanned_emulator"


def test_emulator_reports_what_it_issues_over_http() -> None:
    with scanned_emulator(consumer_secret="a-consumer-secret-to-scan") as garmin:
        garmin.add_user("issued@example.com", "issued-password", mfa=True, mfa_code="97531")
        session = requests.Session()
        session.get(f"{garmin.url}{SIGN_IN_PATH}", timeout=5)
    cookies = set(session.cookies.values())
    assert len(cookies) == 1
    expected = cookies | {"a-consumer-secret-to-scan", "issued-password", "97531"}
    assert expected <= every_secret_issued()


def test_scan_finds_a_secret_in_a_message_an_extra_and_a_traceback() -> None:
    with scanned_emulator() as garmin:
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
