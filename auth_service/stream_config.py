"""The change stream's and the webhooks' settings (issue 16), read from the environment with
the rest of auth_service.config (kept apart so that module stays about everything else).

A webhook secret comes from GARMIN_AUTH_WEBHOOK_SECRET or, better in Kubernetes, the file
GARMIN_AUTH_WEBHOOK_SECRET_FILE names (a mounted Secret); never both. It never appears in a
message or a repr.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from auth_service.domain.changes import StreamSettings, WebhookSettings
from auth_service.serving_config import MAX_WATCHERS_LIMIT
from garmin_client.env import EnvReader, read_secret_file

# Shorter secrets are guessable enough to forge signatures with.
MIN_SECRET_LENGTH = 16


def read_stream_settings(reader: EnvReader) -> StreamSettings:
    return StreamSettings(
        max_watchers=reader.integer("MAX_WATCHERS", 8, minimum=0, maximum=MAX_WATCHERS_LIMIT),
        heartbeat_seconds=reader.number("STREAM_HEARTBEAT", 15.0, minimum=0.1, maximum=3600),
        poll_seconds=reader.number("STREAM_POLL", 1.0, minimum=0.05, maximum=60),
        send_timeout_seconds=reader.number("STREAM_SEND_TIMEOUT", 30.0, minimum=0.5, maximum=3600),
    )


def _secret(reader: EnvReader) -> bytes:
    value = reader.get("WEBHOOK_SECRET")
    path = reader.path("WEBHOOK_SECRET_FILE")
    if value is not None and path is not None:
        raise reader.error("WEBHOOK_SECRET", "set it or GARMIN_AUTH_WEBHOOK_SECRET_FILE, not both")
    name = "WEBHOOK_SECRET"
    if path is not None:
        name = "WEBHOOK_SECRET_FILE"
        # Capped, never blocking on a FIFO; the content is never quoted, not even in part.
        value = read_secret_file(reader.prefix + name, str(path))
    if value is None:
        raise reader.error("WEBHOOK_SECRET", "is required when GARMIN_AUTH_WEBHOOK_URL is set")
    if len(value) < MIN_SECRET_LENGTH:
        raise reader.error(name, f"must be at least {MIN_SECRET_LENGTH} characters")
    return value.encode()


def _check_url(reader: EnvReader, url: str) -> None:
    """Refuse at start-up what every POST would fail on. The URL is never quoted, nor
    urllib's message (which quotes it): it may carry credentials."""
    # urlsplit silently drops tabs and line breaks; the HTTP stack refuses them (and any
    # other control character) in a URL.
    if not url.isprintable():
        raise reader.error("WEBHOOK_URL", "must be printable (no control characters)")
    try:
        parts = urlsplit(url)  # ValueError: an unclosed "[" (IPv6 host)
        port = parts.port  # ValueError: a port out of range or not a number
    except ValueError:
        raise reader.error("WEBHOOK_URL", "is not a valid URL (host or port)") from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise reader.error("WEBHOOK_URL", "expected an http:// or https:// URL")
    if not _postable_host(parts.hostname):
        raise reader.error("WEBHOOK_URL", "is not a valid URL (host name)")
    if port == 0:
        raise reader.error("WEBHOOK_URL", "port must be 1-65535")


def _postable_host(hostname: str) -> bool:
    """Whether the HTTP stack can connect to `hostname` at all: urlsplit takes any text
    between "@" and the port, but urllib3 encodes the name with the "idna" codec before
    resolving it, which refuses an empty label (a doubled dot) and one over 63 characters,
    on every POST; requests refuses a wildcard ("*.") name; no name with a space resolves."""
    if hostname.startswith("*") or any(character.isspace() for character in hostname):
        return False
    try:
        hostname.encode("idna")
    except UnicodeError:
        return False
    return True


def read_webhook_settings(reader: EnvReader, *, production: bool = False) -> WebhookSettings:
    """`production` (GARMIN_AUTH_ENVIRONMENT=production): credentials in an http:// URL,
    which every POST would send in clear (HTTP Basic), are refused."""
    url = reader.get("WEBHOOK_URL")
    if url is None:
        return WebhookSettings()
    _check_url(reader, url)
    parts = urlsplit(url)
    if production and parts.scheme == "http" and "@" in parts.netloc:
        raise reader.error(
            "WEBHOOK_URL",
            "carries credentials in an http:// URL, which every POST would send unencrypted, "
            "and GARMIN_AUTH_ENVIRONMENT=production refuses that: use https://",
        )
    initial = reader.number("WEBHOOK_BACKOFF_INITIAL", 1.0, minimum=0.01, maximum=3600)
    maximum = reader.number("WEBHOOK_BACKOFF_MAX", 300.0, minimum=0.01, maximum=86400)
    if initial > maximum:
        raise reader.error(
            "WEBHOOK_BACKOFF_INITIAL", "must not exceed GARMIN_AUTH_WEBHOOK_BACKOFF_MAX"
        )
    return WebhookSettings(
        url=url,
        secret=_secret(reader),
        timeout_seconds=reader.number("WEBHOOK_TIMEOUT", 10.0, minimum=0.1, maximum=300),
        backoff_initial_seconds=initial,
        backoff_max_seconds=maximum,
        poll_seconds=reader.number("WEBHOOK_POLL", 1.0, minimum=0.05, maximum=60),
    )
