"""Tests of how the service honours Garmin's 429s (issue 17): per-account cooldowns and
per-endpoint breakers shared by two replicas (two engines on one database), the real
providers against the emulator over HTTP."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.changes import StreamSettings, WebhookSettings
from auth_service.domain.clock import Clock
from auth_service.domain.events import NoRefreshEvents
from auth_service.domain.garmin_limits import GarminLimitSettings
from auth_service.domain.paging import Pager
from auth_service.domain.policies import LeaseSettings, LoginSettings, RefreshSettings
from auth_service.domain.ports import GarminUpstream
from auth_service.services.session_import import TokenParsers
from auth_service.services.use_cases import ChangeStreamPorts, UseCases, build_use_cases
from auth_service.storage.change_signal import LocalChangeSignal
from auth_service.storage.secrets import SecretBox
from auth_service.storage.unit_of_work import SqlStore
from auth_service.upstream.di.garminconnect import tokens_from_garminconnect
from auth_service.upstream.garth.dumps import tokens_from_garth_dumps

PASSWORD = "limits-test-password"
# Validation's own per-user limit (issue 14) is off: these tests ask Garmin's gate, not it.
REFRESH = RefreshSettings(
    concurrency=4, claim_seconds=10.0, wait_seconds=15.0, validate_interval_seconds=0.0
)
# No login counter or sign-in cooldown in the way: the gate alone decides here.
LOGIN = LoginSettings(limit=1000, signin_cooldown_seconds=0)


class CountingEvents:
    """LimitEvents that counts what the gate did, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.suppressed: Counter[tuple[str, str]] = Counter()
        self.limited: Counter[tuple[str, bool]] = Counter()

    def call_suppressed(self, endpoint: str, reason: str) -> None:
        with self._lock:
            self.suppressed[endpoint, reason] += 1

    def rate_limited(self, endpoint: str, breaker_opened: bool) -> None:
        with self._lock:
            self.limited[endpoint, breaker_opened] += 1


@dataclass
class Replica:
    """One replica's use cases (as the composition root builds them) and its gate's events."""

    use_cases: UseCases
    events: CountingEvents


def build_replica(
    db: sessionmaker[Session],
    box: SecretBox,
    upstream: GarminUpstream,
    clock: Clock,
    limits: GarminLimitSettings,
    *,
    refresh: RefreshSettings = REFRESH,
    login: LoginSettings = LOGIN,
) -> Replica:
    events = CountingEvents()
    use_cases = build_use_cases(
        SqlStore(db, box),
        clock,
        upstream,
        Pager([b"0" * 32]),
        login=login,
        leases=LeaseSettings(),
        refresh=refresh,
        refresh_events=NoRefreshEvents(),
        token_parsers=TokenParsers(
            garth=tokens_from_garth_dumps, garminconnect=tokens_from_garminconnect
        ),
        limits=limits,
        limit_events=events,
        changes=ChangeStreamPorts(
            signal=LocalChangeSignal(),
            stream=StreamSettings(),
            webhooks=WebhookSettings(),
            webhook_sender=None,
        ),
    )
    return Replica(use_cases, events)


def at_once(askers: list[Callable[[], object]]) -> list[object]:
    """Run every asker at the same moment on its own thread; each one's result or error."""
    start = threading.Barrier(len(askers))

    def run(ask: Callable[[], object]) -> object:
        start.wait()
        try:
            return ask()
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test looks at
            return exc

    with ThreadPoolExecutor(max_workers=len(askers)) as pool:
        return list(pool.map(run, askers))
