"""The gauges read from the database at scrape time: sessions by state, the ACTIVE ones still
on garth's OAuth1 (to be moved to DI before those tokens die), leases, pending MFA
challenges, how close the soonest DI refresh token is to dying (keep-alive lag), the
accounts whose sign-ins (or any call) wait out a cooldown after Garmin's 429, and the state of
each Garmin endpoint's breaker."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import ColumnElement, Engine, and_, case, func, or_, select
from sqlalchemy.exc import SQLAlchemyError

from auth_service.domain.clock import Clock
from auth_service.domain.garmin_limits import BreakerPhase, GarminEndpoint, breaker_phase
from auth_service.domain.models import SessionKind, SessionState
from auth_service.storage.database import SQLITE_BEGIN_OPTION
from auth_service.storage.models import (
    GarminAccountLimit,
    GarminAuthenticationState,
    GarminEndpointBreaker,
    GarminLoginThrottle,
    GarminMfaChallenge,
)

log = logging.getLogger(__name__)


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


@dataclass(frozen=True)
class _Figures:
    sessions: dict[SessionState, int]
    # ACTIVE sessions of garth's legacy flow: each dies with its OAuth1 token (about a year
    # after it was issued) unless its user signs in again with DI.
    garth_active: int
    leases_live: int
    leases_expired: int
    mfa_pending: int
    # Seconds until the soonest refresh-token expiry among ACTIVE DI sessions (None: none).
    keepalive_lag: float | None
    di_expiry_unknown: int
    signin_cooldowns: int
    account_cooldowns: int
    breakers: dict[GarminEndpoint, BreakerPhase]


def _utc(value: datetime | str) -> datetime:
    """An aggregate's timestamp: SQLite returns it without its zone (and as text through
    min()); the column's UTC is restored here."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class DatabaseCollector(Collector):
    """Sessions by state (and the ACTIVE garth ones), leases and pending MFA challenges,
    counted at scrape time.

    Seven cheap aggregate queries, cached for `cache_seconds` so that frequent scrapes (or
    several Prometheus servers) do not turn into load on the database. When the database
    does not answer, the gauges are left out rather than reported stale, and
    garmin_auth_database_metrics_up says 0.
    """

    def __init__(self, engine: Engine, clock: Clock, cache_seconds: float) -> None:
        # A read needs no SQLite write lock.
        self._engine = engine.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._cached: tuple[float, _Figures | None] | None = None
        self._was_up = True

    def describe(self) -> Iterable[Metric]:
        # Names only: registering must not query the database.
        return self._families(None, describe=True)

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self._cache_seconds:
                self._cached = (now, self._read())
            figures = self._cached[1]
        return self._families(figures)

    def _read(self) -> _Figures | None:
        state = GarminAuthenticationState
        now: datetime = self._clock.now()
        try:
            with self._engine.connect() as connection:
                # By kind as well, in the same scan: the ACTIVE garth sessions are one group.
                by_state_and_kind = connection.execute(
                    select(state.state, state.session_kind, func.count()).group_by(
                        state.state, state.session_kind
                    )
                ).all()
                live, expired = connection.execute(
                    select(
                        _count_if(
                            and_(
                                state.state == SessionState.ACTIVE,
                                state.lease_expires_at > now,
                            )
                        ),
                        _count_if(state.lease_expires_at <= now),
                    ).where(state.lease_id.is_not(None))
                ).one()
                pending = connection.execute(
                    select(func.count())
                    .select_from(GarminMfaChallenge)
                    .where(GarminMfaChallenge.expires_at > now)
                ).scalar_one()
                soonest, unknown = connection.execute(
                    select(
                        func.min(state.refresh_token_expires_at),
                        _count_if(state.refresh_token_expires_at.is_(None)),
                    ).where(
                        state.state == SessionState.ACTIVE,
                        state.session_kind == SessionKind.DI_OAUTH2,
                    )
                ).one()
                cooling = connection.execute(
                    select(func.count())
                    .select_from(GarminLoginThrottle)
                    .where(GarminLoginThrottle.signin_cooldown_until > now)
                ).scalar_one()
                accounts = connection.execute(
                    select(func.count())
                    .select_from(GarminAccountLimit)
                    .where(
                        or_(
                            GarminAccountLimit.cooling_until > now,
                            GarminAccountLimit.sign_in_cooling_until > now,
                        )
                    )
                ).scalar_one()
                breakers = connection.execute(
                    select(GarminEndpointBreaker.endpoint, GarminEndpointBreaker.open_until)
                ).all()
        except (SQLAlchemyError, OSError) as exc:
            if self._was_up:
                # Only the type: driver messages can echo connection parameters.
                log.warning("metrics: database unreadable (%s)", type(exc).__name__)
            self._was_up = False
            return None
        self._was_up = True
        sessions: dict[SessionState, int] = {}
        garth_active = 0
        for stored_state, kind, count in by_state_and_kind:
            key = SessionState(stored_state)
            sessions[key] = sessions.get(key, 0) + int(count)
            if key is SessionState.ACTIVE and kind == SessionKind.GARTH:
                garth_active = int(count)
        return _Figures(
            sessions=sessions,
            garth_active=garth_active,
            leases_live=int(live),
            leases_expired=int(expired),
            mfa_pending=int(pending),
            keepalive_lag=None if soonest is None else (_utc(soonest) - now).total_seconds(),
            di_expiry_unknown=int(unknown),
            signin_cooldowns=int(cooling),
            account_cooldowns=int(accounts),
            breakers={
                GarminEndpoint(name): breaker_phase(None if until is None else _utc(until), now)
                for name, until in breakers
            },
        )

    @staticmethod
    def _families(figures: _Figures | None, *, describe: bool = False) -> list[Metric]:
        up = GaugeMetricFamily(
            "garmin_auth_database_metrics_up",
            "1 when the last read of the database gauges succeeded.",
        )
        if not describe:
            up.add_metric([], 0 if figures is None else 1)
        families: list[Metric] = [up]
        sessions = GaugeMetricFamily(
            "garmin_auth_sessions", "Stored Garmin sessions by state.", labels=["state"]
        )
        live = GaugeMetricFamily(
            "garmin_auth_leases_live", "Leases held right now (not expired, session ACTIVE)."
        )
        expired = GaugeMetricFamily(
            "garmin_auth_leases_expired",
            "Leases that expired without being released or ended, not yet taken over.",
        )
        pending = GaugeMetricFamily(
            "garmin_auth_mfa_challenges_pending", "MFA challenges waiting for their code."
        )
        garth = GaugeMetricFamily(
            "garmin_auth_garth_sessions_active",
            "ACTIVE sessions still on garth's legacy OAuth1 (it lives about a year; the last "
            "die around March 2027): their users must sign in again with DI before then.",
        )
        if figures is not None:
            for session_state in SessionState:
                sessions.add_metric([session_state.value], figures.sessions.get(session_state, 0))
            garth.add_metric([], figures.garth_active)
            live.add_metric([], figures.leases_live)
            expired.add_metric([], figures.leases_expired)
            pending.add_metric([], figures.mfa_pending)
        lag = GaugeMetricFamily(
            "garmin_auth_keepalive_lag_seconds",
            "Seconds until the soonest refresh-token expiry among ACTIVE DI sessions (keep-alive "
            "should keep it above GARMIN_AUTH_KEEPALIVE_WINDOW minus one interval; below zero, "
            "a session has died). Absent when there is none.",
        )
        unknown = GaugeMetricFamily(
            "garmin_auth_di_sessions_expiry_unknown",
            "ACTIVE DI sessions whose refresh-token expiry is not known yet (imported).",
        )
        cooldowns = GaugeMetricFamily(
            "garmin_auth_signin_cooldowns_active",
            "Accounts whose sign-ins wait out a cooldown after Garmin's sign-in answered 429 "
            "(GARMIN_AUTH_SIGNIN_COOLDOWN): their logins are answered without calling Garmin.",
        )
        if figures is not None:
            if figures.keepalive_lag is not None:
                lag.add_metric([], figures.keepalive_lag)
            unknown.add_metric([], figures.di_expiry_unknown)
            cooldowns.add_metric([], figures.signin_cooldowns)
        families.extend([sessions, garth, live, expired, pending, lag, unknown, cooldowns])
        families.extend(_limit_families(figures))
        return families


def _limit_families(figures: _Figures | None) -> list[Metric]:
    accounts = GaugeMetricFamily(
        "garmin_auth_account_cooldowns_active",
        "Accounts in a cooldown after a 429 until Garmin's Retry-After has passed (after a "
        "sign-in's 429 only their sign-ins wait; after any other, every call of theirs).",
    )
    breakers = GaugeMetricFamily(
        "garmin_auth_garmin_breaker_state",
        "Each Garmin endpoint's breaker, shared by every replica: 0 closed, 1 open (no call "
        "goes out), 2 half-open (one probe call may go out).",
        labels=["endpoint"],
    )
    if figures is not None:
        accounts.add_metric([], figures.account_cooldowns)
        for endpoint in GarminEndpoint:
            phase = figures.breakers.get(endpoint, BreakerPhase.CLOSED)
            breakers.add_metric([endpoint.value], _PHASE_VALUES[phase])
    return [accounts, breakers]


_PHASE_VALUES = {BreakerPhase.CLOSED: 0, BreakerPhase.OPEN: 1, BreakerPhase.HALF_OPEN: 2}
