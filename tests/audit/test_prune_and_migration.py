"""prune_audit, and migration 0002 on its own (down to 0001 and back) on both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, inspect, text

from auth_service.storage.audit_pruning import prune_audit
from auth_service.storage.database import create_engine_for
from auth_service.storage.models import Base
from auth_service.storage.schema import (
    check_no_drift,
    current_revision,
    downgrade,
    head_revision,
    upgrade_to_head,
)
from tests.audit import Spec, insert_events, read_events
from tests.fixtures.database import table_names

NOW = datetime(2026, 6, 1, tzinfo=UTC)
RETENTION = timedelta(days=90)


def test_prune_deletes_only_events_older_than_the_retention(
    database_url: str, engine: Engine
) -> None:
    cutoff = NOW - RETENTION
    old = [Spec(cutoff - timedelta(days=d, microseconds=1), f"old{d}") for d in range(7)]
    kept = [Spec(cutoff, "edge"), Spec(cutoff + timedelta(days=1), "new"), Spec(NOW, "now")]
    insert_events(database_url, [*old, *kept])

    # Batches of 3: 7 old events take three transactions.
    assert prune_audit(engine, RETENTION, batch_size=3, now=NOW) == len(old)
    assert {event.user_id for event in read_events(database_url)} == {"edge", "new", "now"}
    assert prune_audit(engine, RETENTION, now=NOW) == 0


def test_prune_with_an_exact_multiple_of_the_batch(database_url: str, engine: Engine) -> None:
    insert_events(database_url, [Spec(NOW - timedelta(days=100 + i)) for i in range(4)])
    assert prune_audit(engine, RETENTION, batch_size=2, now=NOW) == 4
    assert read_events(database_url) == []


def test_prune_defaults_to_the_current_time(database_url: str, engine: Engine) -> None:
    now = datetime.now(UTC)
    insert_events(database_url, [Spec(now - timedelta(days=91)), Spec(now - timedelta(days=89))])
    assert prune_audit(engine, RETENTION) == 1
    assert len(read_events(database_url)) == 1


def test_ids_are_never_reused_after_everything_was_pruned(
    database_url: str, engine: Engine
) -> None:
    insert_events(database_url, [Spec(NOW - timedelta(days=200)), Spec(NOW - timedelta(days=199))])
    highest = read_events(database_url)[-1].id
    assert prune_audit(engine, RETENTION, now=NOW) == 2
    insert_events(database_url, [Spec(NOW)])
    assert read_events(database_url)[0].id > highest


@pytest.mark.parametrize("backend", ["sqlite"])
def test_prune_refuses_nonsense(engine: Engine) -> None:
    with pytest.raises(ValueError, match="negative"):
        prune_audit(engine, timedelta(days=-1))
    with pytest.raises(ValueError, match="batch_size"):
        prune_audit(engine, RETENTION, batch_size=0)


def test_migration_0002_down_and_up_keeps_the_othertable_names(empty_database_url: str) -> None:
    url = empty_database_url
    upgrade_to_head(url)
    assert current_revision(url) == head_revision()
    engine = create_engine_for(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO garmin_login_throttle (user_id, window_started_at, attempts) "
                    "VALUES ('kept', '2026-01-01 00:00:00', 1)"
                )
            )
    finally:
        engine.dispose()
    insert_events(url, [Spec(NOW)])

    downgrade(url, "0001")
    assert current_revision(url) == "0001"
    tables = table_names(url)
    assert "garmin_audit_event" not in tables
    assert {"garmin_authentication_state", "garmin_login_throttle"} <= tables

    upgrade_to_head(url)
    model_tables = {table.name for table in Base.metadata.sorted_tables}
    assert table_names(url) == model_tables | {"alembic_version"}
    check_no_drift(url)
    assert read_events(url) == []  # the table came back empty
    engine = create_engine_for(url)
    try:
        with engine.connect() as connection:
            kept = connection.execute(text("SELECT user_id FROM garmin_login_throttle")).scalars()
            assert list(kept) == ["kept"]
        indexes = {index["name"] for index in inspect(engine).get_indexes("garmin_audit_event")}
    finally:
        engine.dispose()
    assert indexes == {
        "ix_garmin_audit_event_user_time",
        "ix_garmin_audit_event_time",
        "ix_garmin_audit_event_lease_id",
    }
