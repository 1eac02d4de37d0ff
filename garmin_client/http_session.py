"""requests Sessions that take from the environment only what we document: proxies and CA
bundles, never a netrc file's credentials."""

from __future__ import annotations

import requests


def upstream_session() -> requests.Session:
    """A requests.Session for calls to Garmin (and our other HTTP peers).

    A netrc file (NETRC, or ~/.netrc) would put its HTTP Basic credentials on every request
    without an auth of its own, replacing the Authorization header we set (a bearer token,
    the token endpoint's client id): Garmin would refuse a good token, which reads as a dead
    session, and the file's credentials would go to Garmin. requests reads no netrc for a
    session that has an auth, so this one has an auth that adds nothing."""
    session = requests.Session()
    session.auth = _unchanged
    return session


def _unchanged(request: requests.PreparedRequest) -> requests.PreparedRequest:
    return request
