"""A database URL's secrets: the password of `user:password@` and the libpq parameters that
carry one (`?password=`, `?sslpassword=`). Shared by the service's database URL and the
worker's PostgreSQL sink, so that neither prints a password however the URL spells it."""

from __future__ import annotations

from typing import Final
from urllib.parse import unquote, urlsplit, urlunsplit

SECRET_PARAMETERS: Final = frozenset({"password", "sslpassword"})


def redacted_url(url: str) -> str:
    """The URL without its passwords (user:password@ and ?password=), fit for a message."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo = (parts.username or "") + ":***"
        netloc = f"{userinfo}@{netloc.rsplit('@', 1)[-1]}"
    query = "&".join(
        f"{name}=***" if name.lower() in SECRET_PARAMETERS else pair
        for pair in parts.query.split("&")
        if pair
        for name in (unquote(pair.partition("=")[0]),)
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def url_secrets(url: str) -> list[str]:
    """Every spelling of the URL's secrets (as written, and decoded), longest first, that a
    driver's message might quote: libpq quotes the piece of a connection string it cannot
    parse."""
    parts = urlsplit(url)
    raw = [parts.netloc.rpartition("@")[0].partition(":")[2]] if parts.password else []
    raw += [
        value
        for name, _, value in (pair.partition("=") for pair in parts.query.split("&"))
        if unquote(name).lower() in SECRET_PARAMETERS
    ]
    spellings = {form for value in raw for form in (value, unquote(value)) if form}
    return sorted(spellings, key=len, reverse=True)


def scrubbed(text: str, url: str) -> str:
    """`text` with every spelling of the URL's secrets replaced by ***."""
    for secret in url_secrets(url):
        text = text.replace(secret, "***")
    return text
