"""benchmarks.lease_soak.age_database: the trail of earlier cycles, numbered after what the
sequencer numbered already, so the service's own numbering carries on without a gap or a
clash."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from auth_service.crypto import Keyring
from auth_service.storage.change_log import decode_status
from auth_service.storage.change_sequencer import sequence_all
from auth_service.storage.database import create_engine_for, session_factory
from benchmarks.harness import PostgresDatabase, clean_environment, seed_sessions
from benchmarks.lease_soak import age_database
from tests.fixtures.database import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]


@pytest.fixture
def database(pg_server: PostgresServer, pg_admin_url: str) -> Iterator[PostgresDatabase]:
    with PostgresDatabase(pg_admin_url) as database:
        database.migrate(clean_environment())
        keyring = Keyring.parse(Keyring.generate_key_value("test"))
        seed_sessions(database, keyring, range(7), lambda _index: None)
        yield database


def test_aged_entries_follow_the_numbered_ones_and_the_sequencer_carries_on(
    database: PostgresDatabase,
) -> None:
    # Three entries the sequencer numbered already, and one still pending.
    for position in (1, 2, 3, None):
        database.execute(
            "INSERT INTO garmin_session_change (position, occurred_at, user_id, rpc, state, "
            "status) SELECT %s, now(), user_id, 'LeaseSession', 'ACTIVE', '{}' "
            "FROM garmin_authentication_state ORDER BY user_id LIMIT 1",
            [position],
        )
    database.execute("UPDATE garmin_change_counter SET last_position = 3 WHERE id = 1")

    megabytes = age_database(database, 50)

    assert megabytes > 0
    audit = database.execute(
        "SELECT rpc, count(*), count(DISTINCT user_id) FROM garmin_audit_event GROUP BY rpc"
    )
    assert sorted(audit) == [("LeaseNextSession", 50, 7), ("ReleaseLease", 50, 7)]
    aged = database.execute(
        "SELECT min(position), max(position), count(*) FROM garmin_session_change "
        "WHERE position > 3"
    )
    assert aged == [(4, 103, 100)]
    assert database.execute("SELECT last_position FROM garmin_change_counter") == [(103,)]
    (status,) = database.execute("SELECT status FROM garmin_session_change WHERE position = 50")[0]
    assert decode_status(status).user_id.startswith("bench-user-")

    engine = create_engine_for(database.url)
    try:
        sequence_all(session_factory(engine))
    finally:
        engine.dispose()
    positions = database.execute(
        "SELECT count(*), count(DISTINCT position), max(position), count(*) FILTER "
        "(WHERE position IS NULL) FROM garmin_session_change"
    )
    assert positions == [(104, 104, 104, 0)]  # the pending entry got 104: no gap, no clash
