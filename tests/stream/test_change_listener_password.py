"""The change listener connects with the parameters the engine's own connections get. Before,
it rendered the engine's URL back as a libpq URI, and a database password holding a space
(accepted by SQLAlchemy and by the pooled connections) is one libpq's URI parser refuses: the
listener never connected, logged a WARNING every 2 s for ever, and replicas never woke each
other's change streams."""

from __future__ import annotations

import time

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from auth_service.storage.change_log import NOTIFY_CHANNEL
from auth_service.storage.change_signal import ListeningChangeSignal
from auth_service.storage.database import create_engine_for


@pytest.mark.postgres
def test_listener_connects_when_the_password_holds_a_space(
    pg_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Trust authentication ignores the password: the pooled connections work with it.
    url = make_url(pg_database_url).set(password="pass word")
    engine = create_engine_for(url.render_as_string(hide_password=False))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT 1")).scalar_one() == 1
    signal = ListeningChangeSignal(engine).start()
    try:
        time.sleep(1.0)
        seen = signal.generation()
        plain = make_url(pg_database_url).set(drivername="postgresql")
        with psycopg.connect(plain.render_as_string(hide_password=False), autocommit=True) as other:
            other.execute(f"NOTIFY {NOTIFY_CHANNEL}")
        signal.wait(seen, 5.0)
        assert signal.generation() != seen, "a NOTIFY from another replica never woke it"
        lost = [r for r in caplog.records if "change listener lost" in r.getMessage()]
        assert not lost, [r.getMessage() for r in lost]
    finally:
        signal.close()
        engine.dispose()
