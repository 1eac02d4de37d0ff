"""Housekeeping on another replica, forced between an "insert if missing" and what follows it.

INSERT ... ON CONFLICT DO NOTHING takes no lock on the row it finds, so another replica's
housekeeping pass may delete that row and commit before the next statement of the same
transaction. The tests of that race (test_throttle_purge_race, test_account_claim_purge_race,
test_signin_cooldown_purge_race) run the pass right after the insert, on its own engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Executable, event
from sqlalchemy.orm import Session

from auth_service.storage.database import create_engine_for, session_factory


@dataclass
class PurgeRace:
    """The tested replica's engine, and what each housekeeping pass run under it purged."""

    engine: Engine
    purged: list[int]


@contextmanager
def purge_after_insert(
    database_url: str,
    *,
    rows: Sequence[Executable],
    table: str,
    purge: Callable[[Session], int],
) -> Iterator[PurgeRace]:
    """Store `rows` (inserts) first; then, the first time the yielded engine inserts into
    `table`, run `purge` (once) on another engine and commit it, right after that INSERT."""
    engine = create_engine_for(database_url)
    housekeeping_engine = create_engine_for(database_url)
    race = PurgeRace(engine, [])
    try:
        with session_factory(engine)() as setup, setup.begin():
            for row in rows:
                setup.execute(row)

        def purge_after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if race.purged or f"INSERT INTO {table}" not in statement:
                return
            # Another replica's housekeeping pass, right now.
            with Session(housekeeping_engine) as other, other.begin():
                race.purged.append(purge(other))

        event.listen(engine, "after_cursor_execute", purge_after)
        yield race
    finally:
        engine.dispose()
        housekeeping_engine.dispose()
