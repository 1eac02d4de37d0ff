"""README "Logs": "anything that looks like a token, password or key is masked before a line
is written" (garmin_client.logging_setup: "the last line of defence ... even if a future log
call passes one by mistake"). Three common spellings of a credential pass the filter whole."""

from __future__ import annotations

import io
import logging
import random

import pytest

from garmin_client import logging_setup
from garmin_client.logging_setup import JsonFormatter, RedactingFilter

CASES = {
    # HTTP Basic: user:password in base64 (webhook URLs with credentials are sent as Basic).
    "basic": ("Authorization: Basic Z2FybWluOlRyMHViNGRvckhvcnNl", "Z2FybWluOlRyMHViNGRvckhvcnNl"),
    # A Cookie header: only the first cookie is masked; Garmin's SSO ticket-granting cookie
    # (CASTGC) after it stays.
    "second cookie": (
        "Cookie: SESSIONID=abc123; CASTGC=TGT-123456-Tr0ub4dorHorse-cas",
        "TGT-123456-Tr0ub4dorHorse-cas",
    ),
    # A Garmin service ticket (it signs its user in, once, within about a minute) and a lease
    # id (whoever holds it syncs, refreshes and ends the lease): 35 and 32 characters, under
    # the opaque-run length, so only their key names give them away.
    "service ticket": (
        "exchanging service_ticket=ST-0123456-Tr0ub4dorHorse99-cas failed",
        "ST-0123456-Tr0ub4dorHorse99-cas",
    ),
    "lease id": (
        '{"lease_id": "Xk3dQ9vLr2TqWm8PzN4bYc7HsJ1aFgE0"}',
        "Xk3dQ9vLr2TqWm8PzN4bYc7HsJ1aFgE0",
    ),
    # A database URL with its password (GARMIN_AUTH_DATABASE_URL's spelling).
    "database url": (
        "could not use postgresql+psycopg://garmin:Tr0ub4dorHorse99@db.internal/garmin",
        "Tr0ub4dorHorse99",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_credential_in_a_log_line_is_masked(name: str) -> None:
    message, secret = CASES[name]
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger(f"tests.redaction_credentials.{name.replace(' ', '_')}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.warning("%s", message)
    finally:
        logger.removeHandler(handler)
    line = out.getvalue()
    assert secret not in line, f"{name}: the credential reached the log line: {line.strip()}"


def _ungated(text: str) -> str:
    """redact() as it was before each pattern got its needles: every pattern, every line."""
    for pattern, _needles in logging_setup._SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + logging_setup.REDACTED, text)
    return text


# Case variants IGNORECASE matches: the Kelvin sign for k, the long s for s, the dotless i
# for i, upper and mixed case.
_WORDS = [
    "ticket",
    "service_Ticket",
    "lease_id",
    "LeaseId",
    "lease-ID",
    "Bearer",
    "bEaReR",
    "basic",
    "Basic",
    "authoriZation",
    "Cookie",
    "set-cookie",
    "passwd",
    "pa\u017fsword",
    "to\u212aen",
    "secret",
    "AP\u0131_KEY",
    "api-key",
    "mfa_code",
    "MFA-Code",
    "eyJhbGciOiJIUzI1NiJ9",
    "postgresql+psycopg://u:",
    "https://",
    "@host",
    "lease",
    "user",
]
_GLUE = [" ", "=", ": ", '"', "'", "; ", ",", "\n", "", "\u00a0", "\\x", "/"]
_VALUES = [
    "Z2FybWluOlRyMHViNGRvckhvcnNl",
    "s3cr3t-value",
    "abc",
    "x" * 45,
    "eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlMTIzNDU2",
    "TGT-1-abc",
    "p@ss",
]


def test_searching_only_lines_that_hold_a_needle_masks_exactly_what_every_pattern_does() -> None:
    """The needles only skip searches that cannot match (most lines): over many lines mixing
    secret words, case variants, glue and values, redact() equals every pattern applied."""
    rng = random.Random(20261207)  # noqa: S311 (a fixed sequence of lines, not a secret)
    pieces = _WORDS + _GLUE + _VALUES
    for _ in range(20000):
        line = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        assert logging_setup.redact(line) == _ungated(line), repr(line)
