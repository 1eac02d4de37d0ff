"""LeaseNextSession's due query on PostgreSQL walks ix_garmin_authentication_state_due and
stops at the first due row (no Sort of every due row), with the Connect API cooldown probe
(an anti-join by the cooldown table's primary key) inside the due condition. A guard of the
lease_scale target (LeaseNextSession at 1M sessions), from a review of that probe."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.dialects import postgresql

from auth_service.storage import lease_repository as lr

pytestmark = pytest.mark.timeout(120)


def _plan(url: str, statement: object, params: dict[str, object]) -> str:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO garmin_authentication_state (user_id, state, session_version,"
                    " fencing_token, created_at, updated_at, last_synced_at)"
                    " SELECT 'u' || lpad(g::text, 6, '0'), CASE WHEN g % 5 = 0 THEN"
                    " 'AUTH_EXPIRED' ELSE 'ACTIVE' END, 1, 0, now(), now(),"
                    " CASE WHEN g % 3 = 0 THEN NULL ELSE now() - (g || ' minutes')::interval"
                    " END FROM generate_series(1, 5000) g"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO garmin_account_limit (user_id, endpoint, cooling_until,"
                    " cooling_started_at) SELECT 'u' || lpad(g::text, 6, '0'), 'connect_api',"
                    " now() + interval '1 hour', now() FROM generate_series(1, 5000, 7) g"
                )
            )
            connection.execute(text("ANALYZE"))
            compiled = statement.compile(dialect=postgresql.dialect())  # type: ignore[attr-defined]
            sql = str(compiled)
            values = {**compiled.params, **params}
            rows = connection.exec_driver_sql("EXPLAIN " + sql, values).all()
            return "\n".join(row[0] for row in rows)
    finally:
        engine.dispose()


@pytest.fixture
def backend() -> str:
    """PostgreSQL's planner is what is checked."""
    return "postgresql"


def test_due_query_walks_the_partial_index(database_url: str) -> None:
    now = datetime.now(UTC)
    params: dict[str, object] = {"p_now": now, "p_due_before": now}
    plan = _plan(database_url, lr._CANDIDATE_DUE.with_for_update(skip_locked=True), params)
    assert "ix_garmin_authentication_state_due" in plan, plan
    assert "Sort" not in plan, plan
