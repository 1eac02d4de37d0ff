"""Lease renewal on the run's one timer (sync_worker.renewals, sync_worker.keeper), against a
fake service over real gRPC: every lease is renewed on time, none after its keeper stopped,
and a slow renewal of one lease never holds up another's."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
import pytest

from garmin_auth.v1 import garmin_auth_pb2 as pb
from sync_worker.control import RunControl
from sync_worker.keeper import LeaseGone, LeaseKeeper
from sync_worker.renewals import Renewals
from tests.worker.test_client import RecordingService, abort, client_of, lease

pytestmark = pytest.mark.timeout(30)

TTL = timedelta(seconds=0.6)  # renewed every 0.2 s


@dataclass
class RenewingService(RecordingService):
    """Counts renewals per lease; `slow` leases take `delay` to answer, `lost` ones are gone."""

    renewed: Counter[str] = field(default_factory=Counter)
    slow: frozenset[str] = frozenset()
    lost: frozenset[str] = frozenset()
    delay: float = 0.0
    finished: list[str] = field(default_factory=list)

    def RenewLease(
        self, request: pb.RenewLeaseRequest, context: grpc.ServicerContext
    ) -> pb.RenewLeaseResponse:
        self.renewed[request.lease_id] += 1
        if request.lease_id in self.slow:
            time.sleep(self.delay)
        self.finished.append(request.lease_id)
        if request.lease_id in self.lost:
            abort(context, grpc.StatusCode.FAILED_PRECONDITION, "gone", reason="LEASE_LOST")
        return pb.RenewLeaseResponse(lease=lease(request.lease_id))


@pytest.fixture
def renewals() -> Iterator[Renewals]:
    timer = Renewals(max_parallel=4)
    yield timer
    timer.close()


@contextmanager
def _keepers(
    fake: RenewingService, renewals: Renewals, names: list[str], ttl: timedelta = TTL
) -> Iterator[dict[str, LeaseKeeper]]:
    with client_of(fake, []) as client:
        control = RunControl(None)
        keepers = {
            name: LeaseKeeper(client, name, ttl, time.monotonic(), control, renewals)
            for name in names
        }
        for keeper in keepers.values():
            keeper.start()
        yield keepers
        for keeper in keepers.values():
            keeper.stop()


def test_every_lease_is_renewed_on_one_timer_and_none_after_stop(renewals: Renewals) -> None:
    fake = RenewingService()
    names = ["a", "b", "c"]
    # A longer ttl than the other tests': renewed every 0.5 s, so a busy machine (the whole
    # suite at once) still renews well within it.
    with _keepers(fake, renewals, names, ttl=timedelta(seconds=1.5)) as keepers:
        time.sleep(1.8)
        for keeper in keepers.values():
            keeper.check()  # renewed: still surely ours past the first ttl
        threads = [thread.name for thread in threading.enumerate()]
        assert threads.count("lease-renewals") == 1
        assert not any(name.startswith("lease-keeper") for name in threads)
        keepers["a"].stop()
        stopped_at = fake.renewed["a"]
        time.sleep(1.2)
        assert fake.renewed["a"] == stopped_at
    assert fake.renewed["a"] >= 2, fake.renewed
    assert all(fake.renewed[name] >= 4 for name in ("b", "c")), fake.renewed


def test_stop_waits_for_a_renewal_in_flight(renewals: Renewals) -> None:
    fake = RenewingService(slow=frozenset({"a"}), delay=0.4)
    with _keepers(fake, renewals, ["a"]) as keepers:
        deadline = time.monotonic() + 5
        while not fake.renewed["a"] and time.monotonic() < deadline:
            time.sleep(0.01)
        keepers["a"].stop()
        assert fake.finished == ["a"]  # the renewal ended before stop() returned


def test_a_slow_renewal_does_not_hold_up_another_lease(renewals: Renewals) -> None:
    fake = RenewingService(slow=frozenset({"slow"}), delay=1.0)
    with _keepers(fake, renewals, ["slow", "fast"]):
        time.sleep(1.0)
    assert fake.renewed["slow"] == 1
    assert fake.renewed["fast"] >= 4, fake.renewed


def test_a_lost_lease_stops_renewing_and_its_writes(renewals: Renewals) -> None:
    fake = RenewingService(lost=frozenset({"gone"}))
    with _keepers(fake, renewals, ["gone"]) as keepers:
        time.sleep(0.6)
        assert keepers["gone"].lost
        with pytest.raises(LeaseGone):
            keepers["gone"].check()
    assert fake.renewed["gone"] == 1


def test_closed_renewals_take_no_more_leases() -> None:
    timer = Renewals(max_parallel=1)
    called = threading.Event()
    timer.at(time.monotonic(), called.set)
    assert called.wait(5)
    timer.close()
    with pytest.raises(RuntimeError):
        timer.at(time.monotonic(), called.set)
