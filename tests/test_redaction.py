"""The log redaction filter's last line of defence, short texts included (they take a fast
path that must not let a secret through)."""

from __future__ import annotations

import pytest

from garmin_client.logging_setup import REDACTED, redact


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("token=abc", "abc"),
        ("passwd=x", "x"),
        ("Bearer abcdef", "abcdef"),
        ("mfa_code=123456", "123456"),
        ("api-key: k1", "k1"),
        ("cookie=Q9", "Q9"),
        ("eyJabcdefghijk.abcdefghijk", "eyJabcdefghijk.abcdefghijk"),
        ("x" * 40, "x" * 40),
        ("refresh_token='Z7q' and more text after it", "Z7q"),
    ],
)
def test_secrets_are_masked_short_or_long(text: str, secret: str) -> None:
    masked = redact(text)
    assert REDACTED in masked
    assert secret not in masked


@pytest.mark.parametrize("text", ["LeaseSession OK", "worker-a", "x" * 39, "LEASE_LOST"])
def test_ordinary_text_is_kept(text: str) -> None:
    assert redact(text) == text
