"""The lease statements, run straight on psycopg's connection (PostgreSQL).

A lease RPC is one statement, and SQLAlchemy's execution path around it (the compiled-cache
lookup, the execution context, parameter processing, the result's metadata, which makes
psycopg build a column description per returned column per execution) cost more Python than
the statement's own round trip: measured with callgrind through the use cases
(benchmarks.lease_instructions), see auth_service/storage/lease_repository.py.

So a hot statement is compiled ONCE for the dialect, and each execution sends the compiled
text with the bound values through the same type processing SQLAlchemy applies (typed
binds in, UTC timestamps and enums out), on the same pooled connection and inside the same
transaction (or autocommit) the unit of work opened. Rows come back as named tuples with the
statement's column keys, which is all the repositories read of a row.

The text is compiled with PostgreSQL's own $1, $2 placeholders and sent through psycopg's raw
cursor, which passes it on as it is: with %(name)s placeholders psycopg rewrites the text on
every execution of a statement longer than 4 KiB (its cache of rewritten queries skips those;
56 us per execution for the 7 KiB handover statement, timed alone), and looks each name up in
the values of every other one.

Falls back to SQLAlchemy's own execution when it must behave exactly as SQLAlchemy does:
on SQLite, on an ORM session, and while anything listens to the engine's cursor events
(tests and benchmarks that record statements). Driver errors become SQLAlchemy's, as they
would have (the API maps them to UNAVAILABLE), and a connection the error shows dead is
invalidated with the whole pool, as SQLAlchemy does after a disconnect.
"""

from __future__ import annotations

import copy
from collections import namedtuple
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from psycopg import RawCursor
from sqlalchemy import Connection, Dialect
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.sql.expression import CompoundSelect, Select, UpdateBase

from auth_service.storage.executor import Executor

Processor = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class _Compiled:
    """One statement compiled for one dialect."""

    sql: str  # with $1, $2, ... placeholders
    defaults: dict[str, Any]  # every bound name with its value when not given
    binds: tuple[tuple[str, Processor], ...]  # names whose values are converted on the way in
    positions: tuple[str, ...]  # the bound name of $1, $2, ...
    make_row: Callable[[Any], Any]  # psycopg's row maker: the values -> our row


class DriverStatement:
    """A Core statement with RETURNING (or a SELECT) run straight on psycopg."""

    def __init__(self, statement: UpdateBase | Select[Any] | CompoundSelect) -> None:
        self.statement = statement
        self._compiled: _Compiled | None = None

    def first(self, executor: Executor, params: Mapping[str, Any]) -> Any:
        """The first row the statement returns (None when none), as SQLAlchemy's would read."""
        if not self._direct(executor):
            return executor.execute(self.statement, dict(params)).first()
        return self._run(executor, params, all_rows=False)

    def all(self, executor: Executor, params: Mapping[str, Any]) -> list[Any]:
        """Every row the statement returns, as SQLAlchemy's would read them."""
        if not self._direct(executor):
            return list(executor.execute(self.statement, dict(params)).all())
        return cast(list[Any], self._run(executor, params, all_rows=True))

    def _run(self, executor: Executor, params: Mapping[str, Any], *, all_rows: bool) -> Any:
        assert isinstance(executor, Connection)
        compiled = self._compiled or self._compile(executor.dialect)
        values = {**compiled.defaults, **params}
        for name, process in compiled.binds:
            values[name] = process(values[name])
        raw: Any = executor.connection.driver_connection  # psycopg.Connection
        dbapi_error = executor.dialect.loaded_dbapi.Error
        try:
            with RawCursor(raw, row_factory=lambda _cursor: compiled.make_row) as cursor:
                cursor.execute(compiled.sql, [values[name] for name in compiled.positions])
                return cursor.fetchall() if all_rows else cursor.fetchone()
        except dbapi_error as exc:
            raise _wrapped(executor, compiled.sql, exc) from exc

    @staticmethod
    def _direct(executor: Executor) -> bool:
        return (
            isinstance(executor, Connection)
            and executor.dialect.driver == "psycopg"
            and not executor.dispatch.before_cursor_execute
            and not executor.dispatch.after_cursor_execute
        )

    def _compile(self, dialect: Dialect) -> _Compiled:
        compiled = self.statement.compile(dialect=_dollar_numbered(dialect))
        # A parameter used in several places has one name and is converted once.
        processors_by_name = {
            name: process
            for bind, name in compiled.bind_names.items()
            if (process := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }
        binds = tuple(processors_by_name.items())
        columns = list(self.statement.exported_columns)
        row_type = namedtuple("Row", [column.key for column in columns])  # type: ignore[misc]
        processors = [
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns
        ]
        converted = [(i, p) for i, p in enumerate(processors) if p is not None]

        def make_row(values: Any) -> Any:
            if converted:
                values = list(values)
                for i, process in converted:
                    values[i] = process(values[i])
            return tuple.__new__(row_type, values)

        positions = tuple(compiled.positiontup or ())
        self._compiled = _Compiled(
            compiled.string, dict(compiled.params), binds, positions, make_row
        )
        return self._compiled


def _dollar_numbered(dialect: Dialect) -> Dialect:
    """The engine's dialect, compiling $1, $2, ... (each bound name numbered once)."""
    numbered = copy.copy(dialect)
    numbered.paramstyle = "numeric_dollar"
    numbered.positional = True
    return numbered


def _wrapped(connection: Connection, sql: str, exc: Any) -> StatementError:
    """The driver's error as SQLAlchemy raises it (values hidden, as the engine hides them),
    the connection and the pool invalidated when the error says it is dead."""
    dialect = connection.dialect
    dead = dialect.is_disconnect(exc, connection.connection.dbapi_connection, None)
    if dead:
        # As SQLAlchemy does: a restart or failover killed every pooled connection, so the
        # whole pool is replaced, not just this one (each would fail one more RPC).
        connection.engine.pool._invalidate(connection.connection, exc)
        connection.invalidate(exc)
    error = DBAPIError.instance(
        sql,
        None,
        exc,
        dialect.loaded_dbapi.Error,
        hide_parameters=True,
        connection_invalidated=dead,
        dialect=dialect,
    )
    assert isinstance(error, StatementError)
    return error
