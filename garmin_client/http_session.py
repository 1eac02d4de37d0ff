"""requests Sessions that take from the environment only what we document: proxies and CA
bundles, never a netrc file's credentials."""

from __future__ import annotations

import requests
from requests.models import PreparedRequest, Response


class _NoNetrcSession(requests.Session):
    """A requests.Session that never reads a netrc file, on a redirect either.

    requests' own rebuild_auth, run for every redirect it follows, applies the netrc entry of
    the new host (or the file's `default` entry) whatever the session's auth is: garth follows
    the redirects of its GETs (a profile answered 302 to a sign-in page), so the operator's
    netrc password would go to wherever Location points."""

    def rebuild_auth(self, prepared_request: PreparedRequest, response: Response) -> None:
        # What requests does, less the netrc: the Authorization we set (a bearer token) is
        # dropped when the redirect leaves the host (or goes from https to http).
        headers = prepared_request.headers
        old_url = response.request.url
        new_url = prepared_request.url
        if (
            "Authorization" in headers
            and old_url is not None
            and new_url is not None
            and self.should_strip_auth(old_url, new_url)
        ):
            del headers["Authorization"]


def upstream_session() -> requests.Session:
    """A requests.Session for calls to Garmin (and our other HTTP peers).

    A netrc file (NETRC, or ~/.netrc) would put its HTTP Basic credentials on every request
    without an auth of its own, replacing the Authorization header we set (a bearer token,
    the token endpoint's client id): Garmin would refuse a good token, which reads as a dead
    session, and the file's credentials would go to Garmin. requests reads no netrc for a
    session that has an auth, so this one has an auth that adds nothing; and on a redirect,
    where requests reads it whatever the auth, this session does not (_NoNetrcSession)."""
    session = _NoNetrcSession()
    session.auth = _unchanged
    return session


def _unchanged(request: requests.PreparedRequest) -> requests.PreparedRequest:
    return request
