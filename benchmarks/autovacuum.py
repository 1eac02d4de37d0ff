"""Autovacuum's work on a server that runs without it, for the benchmarks that run for minutes.

A lease cycle leaves dead row versions behind (a grant and a release each update the session's
row, the sequencer numbers each change-log entry). A production server's autovacuum daemon
removes them as they pile up; this box's PostgreSQL runs with `autovacuum = off`
(/etc/postgresql/15/main/conf.d/90-ci.conf), so there they pile up for the whole run, and
every scan of the due index and every plan that probes an index's ends walks them: a
10-minute soak then measures the missing daemon (its p50 grew 9.7 -> 39.8 ms), not the service.

`AutovacuumStandIn` does, from a thread, what the daemon would do with the server's own
autovacuum settings: every `autovacuum_naptime` it reads each table's counters and VACUUMs
(and ANALYZEs) the tables past the daemon's thresholds, at the daemon's cost-based delay. When
the server runs autovacuum itself, the stand-in does nothing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import psycopg

# Which tables are due, by autovacuum's rules (PostgreSQL 15, autovacuum.c's
# relation_needs_vacanalyze): dead tuples past threshold + scale x reltuples, inserts past the
# insert threshold, changes since the last analyze past the analyze threshold. reltuples is -1
# before a table's first vacuum or analyze, which the daemon counts as 0.
_DUE = """
SELECT quote_ident(s.schemaname) || '.' || quote_ident(s.relname),
       s.n_dead_tup > %(vac_base)s + %(vac_scale)s * greatest(c.reltuples, 0)
       OR s.n_ins_since_vacuum > %(ins_base)s + %(ins_scale)s * greatest(c.reltuples, 0),
       s.n_mod_since_analyze > %(ana_base)s + %(ana_scale)s * greatest(c.reltuples, 0)
FROM pg_stat_user_tables AS s JOIN pg_class AS c ON c.oid = s.relid
"""
_THRESHOLDS = {
    "vac_base": "autovacuum_vacuum_threshold",
    "vac_scale": "autovacuum_vacuum_scale_factor",
    "ins_base": "autovacuum_vacuum_insert_threshold",
    "ins_scale": "autovacuum_vacuum_insert_scale_factor",
    "ana_base": "autovacuum_analyze_threshold",
    "ana_scale": "autovacuum_analyze_scale_factor",
}
_SETTINGS = (
    "autovacuum",
    "autovacuum_naptime",
    *_THRESHOLDS.values(),
    "autovacuum_vacuum_cost_delay",
    "autovacuum_vacuum_cost_limit",
    "vacuum_cost_limit",
)


@dataclass
class VacuumWork:
    """What the stand-in did (the benchmarks print it)."""

    server_autovacuum: bool = True
    naptime_seconds: float = 60.0
    vacuums: int = 0
    analyzes: int = 0


class AutovacuumStandIn:
    """A thread doing autovacuum's work on one database while the server's daemon is off."""

    def __init__(
        self, conninfo: str, *, naptime_seconds: float | None = None, always: bool = False
    ) -> None:
        """`naptime_seconds` and `always` (run even when the server's daemon runs) are for
        the stand-in's own test."""
        self._conninfo = conninfo
        self._naptime = naptime_seconds
        self._always = always
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="autovacuum-stand-in", daemon=True)
        self._settings: dict[str, str] = {}
        self._thresholds: dict[str, float] = {}
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._connection: psycopg.Connection | None = None
        self.work = VacuumWork()

    def __enter__(self) -> Self:
        with psycopg.connect(self._conninfo, autocommit=True) as connection:
            rows = connection.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", [list(_SETTINGS)]
            ).fetchall()
        self._settings = dict(rows)
        self._thresholds = {key: float(self._settings[name]) for key, name in _THRESHOLDS.items()}
        self.work.server_autovacuum = self._settings["autovacuum"] == "on"
        self.work.naptime_seconds = self._naptime or float(self._settings["autovacuum_naptime"])
        if self._always or not self.work.server_autovacuum:
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping.set()
        with self._lock:
            if self._connection is not None:
                self._connection.cancel()  # a VACUUM under way ends now, like the daemon's
        if self._thread.is_alive():
            self._thread.join()
        if self._error is not None and exc is None:
            raise RuntimeError("the autovacuum stand-in failed") from self._error

    def _loop(self) -> None:
        try:
            with psycopg.connect(self._conninfo, autocommit=True) as connection:
                with self._lock:
                    self._connection = connection
                # The daemon's throttle (autovacuum_vacuum_cost_delay is in milliseconds;
                # a cost limit of -1 means vacuum_cost_limit).
                limit = int(self._settings["autovacuum_vacuum_cost_limit"])
                if limit < 0:
                    limit = int(self._settings["vacuum_cost_limit"])
                delay = float(self._settings["autovacuum_vacuum_cost_delay"])
                connection.execute(f"SET vacuum_cost_delay = {delay}".encode())
                connection.execute(f"SET vacuum_cost_limit = {limit}".encode())
                while not self._stopping.wait(self.work.naptime_seconds):
                    self._round(connection)
        except psycopg.errors.QueryCanceled:
            if not self._stopping.is_set():
                raise
        except BaseException as exc:  # noqa: BLE001 - raised again on exit
            self._error = exc
        finally:
            with self._lock:
                self._connection = None

    def _round(self, connection: psycopg.Connection) -> None:
        """One visit of the daemon: every table past a threshold, vacuumed and/or analyzed."""
        for table, vacuum, analyze in connection.execute(_DUE, self._thresholds).fetchall():
            if self._stopping.is_set():
                return
            # The table's name was quoted by quote_ident.
            if vacuum:
                statement = f"VACUUM (ANALYZE) {table}" if analyze else f"VACUUM {table}"
            elif analyze:
                statement = f"ANALYZE {table}"
            else:
                continue
            connection.execute(statement.encode())
            self.work.vacuums += int(vacuum)
            self.work.analyzes += int(analyze)
