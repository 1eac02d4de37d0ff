"""How often GetStatus(validate) may reach Garmin for one user (issue 14, finding 5).

Validation calls Garmin and may refresh or end the session, so it is an admin's tool, and
even an admin's script must not turn it into a flood on Garmin: per replica, one validation
per user per interval. A sooner ask answers VALIDATE_RATE_LIMITED with the time left, before
any call to Garmin.

Kept in memory, per replica: the limit bounds what each replica sends Garmin (with R
replicas behind a balancer, at most R validations per user per interval), without a write
to the database for every ask.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import datetime, timedelta

from auth_service.domain.errors import ValidateRateLimited


class ValidationLimit:
    """Admits one validation per user per `interval` (timedelta(0): every one)."""

    def __init__(self, interval: timedelta) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        # user id -> when its last admitted validation began; oldest first, so expired
        # entries are dropped from the front and the map holds only the last interval's users.
        self._last: OrderedDict[str, datetime] = OrderedDict()

    def admit(self, user_id: str, now: datetime) -> None:
        """Let a validation of `user_id` through, or raise ValidateRateLimited."""
        if self._interval <= timedelta(0):
            return
        with self._lock:
            while self._last:
                oldest_user, began = next(iter(self._last.items()))
                if now - began < self._interval:
                    break
                del self._last[oldest_user]
            last = self._last.get(user_id)
            if last is not None:
                wait = self._interval - (now - last)
                raise ValidateRateLimited(
                    f"this user was validated with Garmin less than "
                    f"{self._interval.total_seconds():g} s ago; retry later or read the "
                    "status without validate",
                    retry_after_seconds=wait.total_seconds(),
                )
            self._last[user_id] = now

    def forget(self, user_id: str, began: datetime) -> None:
        """Un-count the validation of `user_id` admitted at `began`: the service answered it
        without asking Garmin (a cooldown or an open breaker held it back)."""
        with self._lock:
            if self._last.get(user_id) == began:
                del self._last[user_id]
