"""connectapi.garmin.com's Bearer API the sync needs: the social profile, the activity list
and activity downloads. It takes garth's OAuth2 tokens and DI's JWTs alike; an expired,
revoked or unknown one gets Garmin's 401 "Token is not active". Every call is recorded
(ApiCall, with the app headers it carried) for tests to read back."""

from __future__ import annotations

import time
from collections.abc import Callable

from garmin_emulator import jwt
from garmin_emulator.activities import local_date_within
from garmin_emulator.endpoints import DOWNLOAD_PREFIX
from garmin_emulator.options import EMBED_SERVICE_URL, DiOptions
from garmin_emulator.state import AccessGrant, ApiCall, EmulatedUser, EmulatorState
from garmin_emulator.wire import BadRequest, Incoming, Reply, error_reply, json_reply

NOT_ACTIVE = (
    "WWW-Authenticate",
    'Bearer error="invalid_token", error_description="Token is not active"',
)


class ConnectApi:
    """The Bearer API endpoints, over the shared state; `key` verifies DI access tokens."""

    def __init__(self, state: EmulatorState, options: DiOptions, key: bytes) -> None:
        self._state = state
        self._options = options
        self._key = key

    def profile(self, request: Incoming) -> Reply:
        def answer(user: EmulatedUser) -> Reply:
            return json_reply(
                200,
                {
                    "id": user.profile_id,
                    "profileId": user.profile_id,
                    "garminGUID": f"guid-{user.profile_id}",
                    "displayName": user.display_name,
                    "fullName": user.display_name.title(),
                    "userName": user.email,
                    "profileVisibility": "private",
                    "location": None,
                },
            )

        return self._api(request, answer)

    def activity_list(self, request: Incoming) -> Reply:
        start = request.int_param("start", 0, minimum=0)
        limit = request.int_param("limit", 20, minimum=0)
        first = request.date_param("startDate")
        last = request.date_param("endDate")

        def answer(user: EmulatedUser) -> Reply:
            with self._state.lock:
                activities = list(self._state.activities[user.email.lower()])
            chosen = [a for a in activities if local_date_within(a, first, last)]
            # Garmin lists newest first.
            chosen.sort(key=lambda a: (a["startTimeGMT"], a["activityId"]), reverse=True)
            return json_reply(200, chosen[start : start + limit])

        return self._api(request, answer)

    def download(self, request: Incoming) -> Reply:
        raw_id = request.path[len(DOWNLOAD_PREFIX) :]
        if not raw_id.isdigit():
            raise BadRequest("activity id must be a number")

        def answer(user: EmulatedUser) -> Reply:
            with self._state.lock:
                owned = self._state.files.get(int(raw_id))
            if owned is None or owned[0] != user.email.lower():
                return error_reply(404, "activity not found")
            headers = [("Content-Disposition", f'attachment; filename="{raw_id}.zip"')]
            return Reply(
                200, owned[1], content_type="application/x-zip-compressed", headers=headers
            )

        return self._api(request, answer)

    def _api(self, request: Incoming, answer: Callable[[EmulatedUser], Reply]) -> Reply:
        owner = self._bearer_owner(request)
        if owner is None:
            reply = error_reply(401, "invalid or expired access token")
            reply.headers.append(NOT_ACTIVE)
        else:
            with self._state.lock:
                user = self._state.users[owner]
            reply = answer(user)
        access = self._grant(request)
        with self._state.lock:
            self._state.records.api_calls.append(
                ApiCall(
                    method=request.method,
                    path=request.path,
                    query=request.raw_query,
                    authorization=request.authorization,
                    token_owner=access.email if access is not None else None,
                    status=reply.status,
                    token_kind=None
                    if access is None
                    else ("garth" if access.client_id is None else "di"),
                    app_headers=request.app_headers,
                    cookies=dict(request.cookies),
                )
            )
        return reply

    def _bearer_owner(self, request: Incoming) -> str | None:
        header = request.authorization
        if not header or not header.startswith("Bearer "):
            return None
        token = header[len("Bearer ") :]
        with self._state.lock:
            access = self._state.access.get(token)
            if access is None or access.revoked or access.expires_at <= time.time():
                return None
        if access.client_id is not None and not self._di_token_accepted(token, access):
            return None
        return access.email

    def _di_token_accepted(self, token: str, access: AccessGrant) -> bool:
        if jwt.verified_payload(token, self._key) is None:
            return False
        # Since June 2026 the API refuses the browser widget's tokens for some accounts.
        return not (
            self._options.api_refuses_embed_tokens and access.service_url == EMBED_SERVICE_URL
        )

    def _grant(self, request: Incoming) -> AccessGrant | None:
        """The grant of the request's token, valid or not (for the API record)."""
        header = request.authorization or ""
        with self._state.lock:
            return self._state.access.get(header.removeprefix("Bearer "))
