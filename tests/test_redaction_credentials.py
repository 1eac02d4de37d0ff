"""README "Logs": "anything that looks like a token, password or key is masked before a line
is written" (garmin_client.logging_setup: "the last line of defence ... even if a future log
call passes one by mistake"). Three common spellings of a credential pass the filter whole."""

from __future__ import annotations

import io
import logging

import pytest

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
