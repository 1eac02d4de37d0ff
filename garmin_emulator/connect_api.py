"""connectapi.garmin.com's Bearer API the sync needs: the social profile, the activity list
and activity downloads. Every call is recorded (ApiCall) for tests to read back."""

from __future__ import annotations

import time
from collections.abc import Callable

from garmin_emulator.activities import local_date_within
from garmin_emulator.endpoints import DOWNLOAD_PREFIX
from garmin_emulator.state import ApiCall, EmulatedUser, EmulatorState
from garmin_emulator.wire import BadRequest, Incoming, Reply, error_reply, json_reply


class ConnectApi:
    """The Bearer API endpoints, over the shared state."""

    def __init__(self, state: EmulatorState) -> None:
        self._state = state

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
        else:
            with self._state.lock:
                user = self._state.users[owner]
            reply = answer(user)
        with self._state.lock:
            self._state.records.api_calls.append(
                ApiCall(
                    method=request.method,
                    path=request.path,
                    query=request.raw_query,
                    authorization=request.authorization,
                    token_owner=self._token_owner(request),
                    status=reply.status,
                )
            )
        return reply

    def _bearer_owner(self, request: Incoming) -> str | None:
        header = request.authorization
        if not header or not header.startswith("Bearer "):
            return None
        with self._state.lock:
            access = self._state.access.get(header[len("Bearer ") :])
            if access is None or access.revoked or access.expires_at <= time.time():
                return None
            return access.email

    def _token_owner(self, request: Incoming) -> str | None:
        """Whose token this is, valid or not (for the API record)."""
        header = request.authorization or ""
        with self._state.lock:
            access = self._state.access.get(header.removeprefix("Bearer "))
            return access.email if access is not None else None
