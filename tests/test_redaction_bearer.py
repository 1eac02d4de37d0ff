"""A bearer credential is masked whole wherever it sits in a line: after "Authorization:",
inside quotes up to the closing quote, and past a byte no token holds (a non-ASCII character,
or the escape a bytes repr writes for it), as gRPC's "Invalid encoding on b'...'" line has it."""

from __future__ import annotations

import pytest

from garmin_client.logging_setup import REDACTED, redact

HEAD = "Kq3vT9xWb2LmN7pRs4Yz"
TAIL = "hJ6dF1gA8cE5uV0iO2wQe3r"


@pytest.mark.parametrize(
    "text",
    [
        # gRPC's own line: the repr of the raw header bytes.
        f"Invalid encoding on b'Bearer {HEAD}\\xa0{TAIL}'",
        # A str repr: double quotes, and an escaped quote inside.
        f'value "Bearer {HEAD}\\"{TAIL}" refused',
        # Quoted, with punctuation or a space inside the value.
        f"{{'authorization': 'Bearer {HEAD} {TAIL}'}}",
        f"header 'bearer {HEAD}%{TAIL}'",
        # Unquoted, past a non-ASCII character or an escape.
        f"Bearer {HEAD}\u00e9{TAIL} and more",
        f"Bearer {HEAD}\\xa0{TAIL}",
    ],
)
def test_the_whole_bearer_value_is_masked(text: str) -> None:
    masked = redact(text)
    assert REDACTED in masked
    assert HEAD not in masked
    assert TAIL not in masked


def test_text_after_the_closing_quote_is_kept() -> None:
    masked = redact(f"Invalid encoding on b'Bearer {HEAD}\\xa0{TAIL}' from 10.0.0.7")
    assert masked == f"Invalid encoding on b'Bearer {REDACTED}' from 10.0.0.7"


def test_an_unquoted_value_ends_at_a_space() -> None:
    assert redact("Bearer abcdef and more") == f"Bearer {REDACTED} and more"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (f"Authorization: Bearer {HEAD}", f"Authorization: {REDACTED} {REDACTED}"),
        (f'token="Bearer {HEAD}"', f'token="{REDACTED} {REDACTED}"'),
    ],
)
def test_a_short_token_after_a_secret_key_is_masked(text: str, masked: str) -> None:
    """The key=value pattern masks only the next word ("Bearer"); a token of 40 characters
    or more was still caught as an opaque run, a shorter one was not."""
    assert redact(text) == masked
