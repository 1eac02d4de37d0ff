"""Replica A cut off from PostgreSQL alone while replica B still reaches it: A logs in as a
role of its own on a private cluster (tests/reliability/cluster.py), which an admin refuses
(the `partition` fixture of tests/refresh/conftest.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.clock import FakeClock
from auth_service.domain.policies import RefreshSettings
from auth_service.domain.ports import GarminUpstream
from auth_service.storage.database import create_engine_for, session_factory
from auth_service.storage.secrets import SecretBox
from garmin_emulator import GarminEmulator
from tests.reliability.cluster import PrivateCluster

from . import DiAccounts, Replica, build_replica, during_next_refresh

ROLE_A = "replica_a"


@dataclass
class Partition:
    """A's sessions (its own role) and B's (the admin's) on one database, and what both
    replicas share: the secret box, Garmin's providers and the clock."""

    admin: Engine
    db_a: sessionmaker[Session]
    db_b: sessionmaker[Session]
    box: SecretBox
    upstream: GarminUpstream
    clock: FakeClock

    def replicas(self, settings: RefreshSettings) -> tuple[Replica, Replica]:
        """Replicas A and B with these settings."""
        return (
            build_replica(self.db_a, self.box, self.upstream, self.clock, settings),
            build_replica(self.db_b, self.box, self.upstream, self.clock, settings),
        )

    def accounts(self, emulator: GarminEmulator) -> DiAccounts:
        """DI sessions issued by `emulator`, stored through B."""
        return DiAccounts(emulator, self.clock, self.db_b, self.box)

    def cut_off_a(self) -> None:
        """Refuse A's role new connections and end the ones it has."""
        with self.admin.begin() as connection:
            connection.exec_driver_sql(f"ALTER ROLE {ROLE_A} NOLOGIN")
            connection.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %(role)s",
                {"role": ROLE_A},
            )

    def let_a_back(self) -> None:
        with self.admin.begin() as connection:
            connection.exec_driver_sql(f"ALTER ROLE {ROLE_A} LOGIN")

    def cut_off_a_once_garmin_has_it(
        self, emulator: GarminEmulator, email: str, call: Callable[[], object]
    ) -> tuple[threading.Thread, list[object]]:
        """Run `call` (A's) on a thread of its own, A cut off as soon as its refresh reaches
        Garmin; return once Garmin rotated `email`'s pair for A. A's answer, or its error,
        lands in the list once the thread ends."""
        answers: list[object] = []

        def run() -> None:
            try:
                with during_next_refresh(emulator, self.cut_off_a):
                    answers.append(call())
            except Exception as exc:  # noqa: BLE001 - read by the test
                answers.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while emulator.di_refresh_count(email) == 0:  # Garmin rotated the pair for A
            assert time.monotonic() < deadline, "A's refresh never reached Garmin"
            time.sleep(0.02)
        return thread, answers


@contextmanager
def partitionable(
    cluster: PrivateCluster, box: SecretBox, upstream: GarminUpstream, clock: FakeClock
) -> Iterator[Partition]:
    admin = create_engine_for(cluster.url)
    try:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"CREATE ROLE {ROLE_A} LOGIN")
            connection.exec_driver_sql(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {ROLE_A}")
            connection.exec_driver_sql(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {ROLE_A}")
        url_a = make_url(cluster.url).set(username=ROLE_A).render_as_string(False)
        engine_a = create_engine_for(url_a)
        try:
            db_a, db_b = session_factory(engine_a), session_factory(admin)
            yield Partition(admin, db_a, db_b, box, upstream, clock)
        finally:
            engine_a.dispose()
    finally:
        admin.dispose()
