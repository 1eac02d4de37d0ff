"""The database's clock rules, whatever this machine's clock says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from auth_service.domain.clock import FakeClock, SystemClock
from auth_service.storage.clock import DatabaseClock, clock_for
from auth_service.storage.database import create_engine_for

on_postgresql = pytest.mark.parametrize("backend", ["postgresql"])


class SkewedClock:
    """This machine's clock, off by a fixed amount (a replica whose NTP broke)."""

    def __init__(self, skew: timedelta) -> None:
        self.skew = skew

    def now(self) -> datetime:
        return datetime.now(UTC) + self.skew


@on_postgresql
@pytest.mark.parametrize("skew_seconds", [-45, 0, 30])
def test_skewed_machine_still_tells_the_database_time(engine: Engine, skew_seconds: int) -> None:
    clock = DatabaseClock(engine, base=SkewedClock(timedelta(seconds=skew_seconds)))
    told = clock.now()
    real = datetime.now(UTC)  # the database runs on this machine: its clock is the real one
    assert abs((told - real).total_seconds()) < 0.5
    assert abs(clock.offset.total_seconds() + skew_seconds) < 0.5


@on_postgresql
def test_offset_is_measured_again_after_the_resync_interval(engine: Engine) -> None:
    base = SkewedClock(timedelta(0))
    clock = DatabaseClock(engine, base=base, resync_seconds=0.0)
    clock.now()
    base.skew = timedelta(seconds=20)  # the machine's clock jumps
    assert abs((clock.now() - datetime.now(UTC)).total_seconds()) < 0.5


@on_postgresql
def test_unreachable_database_keeps_the_last_offset(engine: Engine) -> None:
    base = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
    clock = DatabaseClock(engine, base=base, resync_seconds=0.0)
    clock.now()
    measured = clock.offset
    assert measured < timedelta(days=-365)
    # The database goes away (nothing listens on port 1): the offset measured before stays.
    clock._engine = create_engine_for("postgresql+psycopg://postgres@127.0.0.1:1/gone")
    assert clock.now() == base.now() + measured


@on_postgresql
def test_clock_for_picks_the_database_clock_on_postgresql(engine: Engine) -> None:
    assert isinstance(clock_for(engine), DatabaseClock)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_runs_on_this_machine_clock(engine: Engine) -> None:
    assert isinstance(clock_for(engine), SystemClock)
