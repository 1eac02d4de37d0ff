"""The loop benchmarks.lease_instructions runs under callgrind: LeaseSession + ReleaseLease
through the use cases (no gRPC), one thread, against the database it is given.

    python benchmarks/lease_instructions_child.py PAIRS DATABASE_URL KEYRING USER_COUNT

Imports nothing from benchmarks/: it runs the service code first on PYTHONPATH (a
--service-revision export, or the working tree), which may predate this directory's code.
"""

from __future__ import annotations

import sys

from auth_service.crypto import Keyring
from auth_service.domain.clock import SystemClock
from auth_service.domain.events import NoRefreshEvents
from auth_service.domain.policies import DiSettings, LeaseSettings, LoginFlow, RefreshSettings
from auth_service.services.leases import LeaseService
from auth_service.services.session_refresh import SessionRefresher
from auth_service.services.unit_of_work import UnitsOfWork
from auth_service.storage.database import create_engine_for, session_factory
from auth_service.storage.secrets import SecretBox
from auth_service.storage.unit_of_work import SqlStore
from auth_service.upstream.di.provider import DiUpstream
from auth_service.upstream.garth.provider import GarthUpstream
from auth_service.upstream.router import UpstreamRouter
from garmin_client.settings import UpstreamSettings

# Before the measured pairs: statement caches, prepared statements, imports of lazy paths.
WARM_UP_PAIRS = 20


def main(pairs: int, url: str, keyring: str, users: int) -> None:
    engine = create_engine_for(url)
    # No call reaches Garmin: the seeded tokens outlive every lease (no central refresh).
    upstream = UpstreamSettings(consumer_key="unused", consumer_secret="unused")  # noqa: S106
    router = UpstreamRouter(
        garth=GarthUpstream(upstream),
        di=DiUpstream(upstream, DiSettings()),
        login_flow=LoginFlow.GARTH,
    )
    uow = UnitsOfWork(
        SqlStore(session_factory(engine), SecretBox(Keyring.parse(keyring))), SystemClock()
    )
    refresher = SessionRefresher(uow, router, RefreshSettings(), NoRefreshEvents())
    leases = LeaseService(uow, refresher, LeaseSettings())
    for index in range(WARM_UP_PAIRS + pairs):
        grant = leases.lease_session(f"bench-user-{index % users:07d}", "bench", None)
        leases.release_lease(grant.lease.lease_id, None)
    engine.dispose()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]))
