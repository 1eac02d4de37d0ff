"""The database's clock rules, whatever this machine's clock says."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from auth_service.domain.clock import FakeClock, SystemClock
from auth_service.storage.clock import RETRY_SECONDS, DatabaseClock, clock_for
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
def test_unreachable_database_keeps_the_last_reading(engine: Engine) -> None:
    base = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
    clock = DatabaseClock(engine, base=base, resync_seconds=0.0)
    clock.now()
    assert clock.offset < timedelta(days=-365)
    # The database goes away (nothing listens on port 1): the clock counts on from the last
    # reading, never falling back to this machine's (here years off).
    clock._engine = create_engine_for("postgresql+psycopg://postgres@127.0.0.1:1/gone")
    assert abs((clock.now() - datetime.now(UTC)).total_seconds()) < 0.5


@on_postgresql
def test_a_step_of_the_machine_clock_between_readings_moves_nothing(engine: Engine) -> None:
    """Counted on the monotonic clock between readings: a wall clock stepped (NTP, an
    operator) after a reading does not move the replica's "now" until the next one. Before,
    the last offset was added to the stepped wall clock: off by the whole step for up to
    resync_seconds (tests/leases/test_clock_step.py shows the lease it cost)."""
    base = SkewedClock(timedelta(0))
    clock = DatabaseClock(engine, base=base)  # the default resync: 30 s
    clock.now()
    base.skew = timedelta(minutes=5)
    assert abs((clock.now() - datetime.now(UTC)).total_seconds()) < 0.5


def test_without_a_first_reading_the_clock_tries_again_within_a_second() -> None:
    """A replica that could not read the database's time at start tells its own machine's
    time, and reads again within RETRY_SECONDS, not after resync_seconds. Before, the failed
    first reading counted as one, and the replica ran on its machine's clock, however off, for
    the whole resync interval."""
    gone = create_engine_for("postgresql+psycopg://postgres@127.0.0.1:1/gone")
    clock = DatabaseClock(gone, resync_seconds=3600.0)
    clock.now()
    assert clock._synced_at is not None
    attempted = clock._synced_at
    time.sleep(RETRY_SECONDS + 0.1)
    clock.now()
    assert clock._synced_at > attempted, "no second reading within RETRY_SECONDS"
    gone.dispose()


@on_postgresql
def test_clock_for_picks_the_database_clock_on_postgresql(engine: Engine) -> None:
    assert isinstance(clock_for(engine), DatabaseClock)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_runs_on_this_machine_clock(engine: Engine) -> None:
    assert isinstance(clock_for(engine), SystemClock)
