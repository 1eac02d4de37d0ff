"""A database URL's secrets: the password of `user:password@` and the libpq parameters that
carry one (`?password=`, `?sslpassword=`). Shared by the service's database URL and the
worker's PostgreSQL sink, so that neither prints a password however the URL spells it.

The password is found as SQLAlchemy finds it (everything from the first `:` after the user
name up to the `@`), not as urllib's urlsplit does: urlsplit ends the host part at the first
`#`, `/` or `?`, so a password holding one of them would not be found, while SQLAlchemy reads
and connects with all of it. A URL whose password libpq would read differently only ever has
more hidden than needed.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote

SECRET_PARAMETERS: Final = frozenset({"password", "sslpassword"})
# SQLAlchemy's own reading of `scheme://user:password@`: the user name holds no `:` or `/`
# (an `@` it may hold: Azure's `user@server`), the password no `@`.
_USERINFO: Final = re.compile(r"[\w+.-]+://(?P<user>[^:/]*)(?::(?P<password>[^@]*))?@")


def redacted_url(url: str) -> str:
    """The URL without its passwords (user:password@ and ?password=), fit for a message."""
    head, rest = _split(url)
    found = _USERINFO.match(url)
    if found is not None and found.group("password") is not None:
        head = url[: found.start("password")] + "***@"
    base, mark, query = rest.partition("?")
    if not mark:
        return head + base
    masked = "&".join(
        f"{name}=***" if name.lower() in SECRET_PARAMETERS else pair
        for pair in query.split("&")
        if pair
        for name in (unquote(pair.partition("=")[0]),)
    )
    return f"{head}{base}?{masked}"


def unencoded_at_after_password(url: str) -> bool:
    """Whether an `@` follows the one that ends `user:password@`: a password holding an `@`
    not percent-encoded (%40). SQLAlchemy ends the password at its first `@` and takes the
    rest for the host, path or query, so the rest of the password would be shown as the host
    by every message that names it. Anywhere after it, not just before the host's end: a
    password may also hold `/`, `?` or `#`, which end the host."""
    found = _USERINFO.match(url)
    return found is not None and found.group("password") is not None and "@" in url[found.end() :]


def url_secrets(url: str) -> list[str]:
    """Every spelling of the URL's secrets (as written, and decoded), longest first, that a
    driver's message might quote: libpq quotes the piece of a connection string it cannot
    parse."""
    found = _USERINFO.match(url)
    raw = [found.group("password")] if found is not None and found.group("password") else []
    query = _split(url)[1].partition("?")[2]
    raw += [
        value
        for name, _, value in (pair.partition("=") for pair in query.split("&"))
        if unquote(name).lower() in SECRET_PARAMETERS
    ]
    spellings = {form for value in raw for form in (value, unquote(value)) if form}
    return sorted(spellings, key=len, reverse=True)


def scrubbed(text: str, url: str) -> str:
    """`text` with every spelling of the URL's secrets replaced by ***."""
    for secret in url_secrets(url):
        text = text.replace(secret, "***")
    return text


def _split(url: str) -> tuple[str, str]:
    """(the URL up to and including its userinfo's `@`, or its `scheme://`; the rest)."""
    found = _USERINFO.match(url)
    if found is not None:
        return url[: found.end()], url[found.end() :]
    scheme, sep, rest = url.partition("://")
    return (scheme + sep, rest) if sep else ("", url)
