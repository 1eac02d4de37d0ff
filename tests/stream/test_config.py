"""The stream's and the webhooks' settings: defaults, bounds, and the secret's two sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from auth_service.domain.changes import StreamSettings, WebhookSettings
from auth_service.stream_config import read_stream_settings, read_webhook_settings
from garmin_client.env import ConfigError, EnvReader

SECRET = "a-webhook-secret-0123456789"


def _reader(**env: str) -> EnvReader:
    return EnvReader({f"GARMIN_AUTH_{key}": value for key, value in env.items()}, "GARMIN_AUTH_")


def test_defaults() -> None:
    assert read_stream_settings(_reader()) == StreamSettings()
    assert read_webhook_settings(_reader()) == WebhookSettings()
    assert WebhookSettings().url is None


def test_webhooks_with_a_secret_or_a_secret_file(tmp_path: Path) -> None:
    settings = read_webhook_settings(
        _reader(WEBHOOK_URL="https://hooks.example.com/garmin", WEBHOOK_SECRET=SECRET)
    )
    assert (settings.url, settings.secret) == ("https://hooks.example.com/garmin", SECRET.encode())
    assert SECRET not in repr(settings)
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n", encoding="utf-8")
    from_file = read_webhook_settings(
        _reader(WEBHOOK_URL="http://127.0.0.1:9/x", WEBHOOK_SECRET_FILE=str(secret_file))
    )
    assert from_file.secret == SECRET.encode()


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"WEBHOOK_URL": "ftp://example.com", "WEBHOOK_SECRET": SECRET}, "WEBHOOK_URL"),
        ({"WEBHOOK_URL": "https://example.com"}, "WEBHOOK_SECRET"),
        ({"WEBHOOK_URL": "https://example.com", "WEBHOOK_SECRET": "short"}, "WEBHOOK_SECRET"),
        (
            {
                "WEBHOOK_URL": "https://example.com",
                "WEBHOOK_SECRET": SECRET,
                "WEBHOOK_BACKOFF_INITIAL": "10",
                "WEBHOOK_BACKOFF_MAX": "1",
            },
            "WEBHOOK_BACKOFF_INITIAL",
        ),
        ({"MAX_WATCHERS": "-1"}, "MAX_WATCHERS"),
        ({"STREAM_SEND_TIMEOUT": "0"}, "STREAM_SEND_TIMEOUT"),
    ],
)
def test_bad_settings_name_their_variable(env: dict[str, str], variable: str) -> None:
    def read_both() -> None:
        read_stream_settings(_reader(**env))
        read_webhook_settings(_reader(**env))

    with pytest.raises(ConfigError) as raised:
        read_both()
    assert f"GARMIN_AUTH_{variable}" in str(raised.value)
    assert SECRET not in str(raised.value)


def test_a_secret_and_a_secret_file_are_refused_together(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET, encoding="utf-8")
    with pytest.raises(ConfigError, match="GARMIN_AUTH_WEBHOOK_SECRET"):
        read_webhook_settings(
            _reader(
                WEBHOOK_URL="https://example.com",
                WEBHOOK_SECRET=SECRET,
                WEBHOOK_SECRET_FILE=str(secret_file),
            )
        )


def test_backoff_doubles_up_to_its_maximum() -> None:
    settings = WebhookSettings(backoff_initial_seconds=1, backoff_max_seconds=5)
    assert [settings.backoff(n).total_seconds() for n in range(1, 6)] == [1, 2, 4, 5, 5]


@pytest.mark.parametrize("problem", ["missing", "a directory", "not UTF-8"])
def test_an_unreadable_secret_file_is_a_config_error_naming_it(
    tmp_path: Path, problem: str
) -> None:
    """One line naming the variable, never the content (before, a file that is not UTF-8
    gave a UnicodeDecodeError traceback)."""
    secret_file = tmp_path / "secret"
    if problem == "a directory":
        secret_file.mkdir()
    elif problem == "not UTF-8":
        secret_file.write_bytes(b"\xff" + SECRET.encode())
    with pytest.raises(ConfigError, match="GARMIN_AUTH_WEBHOOK_SECRET_FILE") as raised:
        read_webhook_settings(
            _reader(WEBHOOK_URL="https://example.com", WEBHOOK_SECRET_FILE=str(secret_file))
        )
    assert SECRET not in str(raised.value)
