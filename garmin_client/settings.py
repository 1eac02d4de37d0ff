"""How to reach Garmin, and reading it from the environment (the service's GARMIN_AUTH_*
and the worker's GARMIN_SYNC_* variables have the same names after the prefix)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from garmin_client.env import EnvReader


@dataclass(frozen=True, repr=False)
class UpstreamSettings:
    """How to reach Garmin. The consumer secret never appears in the repr."""

    consumer_key: str
    consumer_secret: str
    # Every Garmin host is sent here instead (path and query kept), e.g. the emulator.
    base_url: str | None = None
    # Per request; one call (retries and backoff included) gets at most (retries + 1) times it.
    timeout_seconds: float = 10.0
    # Repeats of a GET answered 408/5xx or failing on the network (garmin_client.retry).
    retries: int = 2

    def __repr__(self) -> str:
        return (
            f"UpstreamSettings(base_url={self.base_url!r}, timeout_seconds={self.timeout_seconds})"
        )


def upstream_url_problem(url: str) -> str | None:
    """What is wrong with `url` as the place every request to Garmin goes (None: nothing).
    Refused at start-up, or every request would fail on it. Never quotes the URL: its
    user-info part may hold a password."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        return "is not a URL (bad host or port)"
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return "must be http(s)://host[:port][/path]"
    if parts.username or parts.password:
        return "must not carry user:password@"
    if parts.query or parts.fragment:
        return "must not have a query or fragment (they are dropped)"
    return None


def read_upstream_settings(reader: EnvReader, *, oauth_consumer: bool = True) -> UpstreamSettings:
    """UPSTREAM_URL, OAUTH_CONSUMER_KEY/_SECRET, UPSTREAM_TIMEOUT, UPSTREAM_RETRIES.

    Without `oauth_consumer` (the worker: it only sends access tokens and signs nothing) the
    consumer is neither read nor set."""
    base_url = reader.get("UPSTREAM_URL")
    if base_url is not None:
        problem = upstream_url_problem(base_url)
        if problem is not None:
            raise reader.error("UPSTREAM_URL", problem)
        base_url = base_url.rstrip("/")
    return UpstreamSettings(
        # Required: a refresh signed with the wrong consumer is answered 401, as for a dead
        # session (the service's garth provider tells them apart by the exchanges Garmin
        # accepted: auth_service.upstream.garth.exchange_refusals).
        consumer_key=reader.required("OAUTH_CONSUMER_KEY") if oauth_consumer else "",
        consumer_secret=reader.required("OAUTH_CONSUMER_SECRET") if oauth_consumer else "",
        base_url=base_url,
        timeout_seconds=reader.number("UPSTREAM_TIMEOUT", 10.0, minimum=0.1, maximum=300),
        retries=reader.integer("UPSTREAM_RETRIES", 2, minimum=0, maximum=10),
    )
