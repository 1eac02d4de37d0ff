"""Lease statements that write their own audit event and change-log entry (PostgreSQL).

A grant, renewal or release changes one row, and its audit event and change-log entry say
what the row became. On PostgreSQL all three are written by ONE statement: the row's UPDATE
as a data-modifying WITH clause, and two INSERTs that read what it returned. A grant, renewal
or release runs its statement alone in autocommit (Store.single_write); a grant whose sealed
session then fails to open is released by a statement of its own (services.leases).
(Measured with callgrind through the use cases: 1.35 M instructions per lease RPC, against
1.92 M with the trail as a second statement. Autocommit saves no Python
instructions, 1.38 M against 1.37 M, since switching the pooled connection's isolation level
costs what the BEGIN and COMMIT did; it saves PostgreSQL the two commands: the statements
straight through psycopg ran 1.36x faster, 0.47 against 0.58 ms of PostgreSQL CPU each.)

The entry's status is the JSON that auth_service.storage.change_log's encode_status writes,
built by PostgreSQL from the returned row: times as PostgreSQL writes a timestamptz in JSON
(ISO 8601 with its offset, which decode_status reads back to the same instant), the lease
(grants and renewals: the row holds a live one) by its reference, never its digest.
tests/stream/test_statement_trail.py holds the two to the same decoded status.

The statements are kept under psycopg's 4 KiB limit for caching a query's parsed form (a
longer one is parsed again at every execution): the session table is aliased in them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from sqlalchemy import (
    CTE,
    ColumnElement,
    CompoundSelect,
    Select,
    Text,
    Update,
    bindparam,
    cast,
    exists,
    func,
    insert,
    literal_column,
    null,
    select,
    union_all,
)
from sqlalchemy.sql.util import ClauseAdapter

from auth_service.domain.audit import OK, AuditedRpc
from auth_service.domain.lease_ids import LEASE_REF_LENGTH
from auth_service.storage import session_rows as rows
from auth_service.storage.audit_repository import EVENTS
from auth_service.storage.change_log import CHANGES, TIMES

# The audit event's caller and RPC (its time is the statement's p_now).
TRAIL_CALLER = bindparam("p_trail_caller", type_=EVENTS.c.caller.type)
TRAIL_RPC = bindparam("p_trail_rpc", type_=EVENTS.c.rpc.type)
# What a handover's rows are (its `part` column).
RELEASED: Final = "released"
GRANTED: Final = "granted"


def _constant(value: str) -> ColumnElement[str]:
    """A string constant written into the statement, not bound: keys and formats are ours,
    and each bound value costs a parameter per execution."""
    if "'" in value:
        raise ValueError("a constant must not contain a quote")
    return literal_column(f"'{value}'", Text)


def _status_json(done: Any, *, with_lease: bool) -> ColumnElement[str]:
    lease: ColumnElement[Any] = null()
    if with_lease:
        lease = func.json_build_object(
            _constant("lease_ref"),
            func.substr(done.c.lease_id, 1, LEASE_REF_LENGTH),
            _constant("holder"),
            done.c.lease_holder,
            _constant("fencing_token"),
            done.c.fencing_token,
            _constant("acquired_at"),
            done.c.lease_acquired_at,
            _constant("expires_at"),
            done.c.lease_expires_at,
        )
    fields: list[Any] = [
        _constant("user_id"),
        done.c.user_id,
        _constant("state"),
        done.c.state,
        _constant("session_version"),
        done.c.session_version,
        _constant("kind"),
        done.c.session_kind,
        _constant("invalidated_reason"),
        done.c.invalidated_reason,
    ]
    for name in TIMES:
        fields += [_constant(name), done.c[name]]
    fields += [_constant("lease"), lease]
    return cast(func.json_build_object(*fields), Text)


def with_trail(
    change: Update, *, lease_digest: ColumnElement[Any] | None, with_lease: bool
) -> Select[Any]:
    """`change` (an UPDATE ... RETURNING every column of one session row), plus the INSERTs of
    its audit event (outcome OK) and change-log entry: one statement returning what `change`
    returns. `lease_digest`: the event's lease digest (None: the row's own lease_id, as after
    a grant); `with_lease`: the row holds a live lease after the change."""
    # "s.user_id" rather than "garmin_authentication_state.user_id", two dozen times.
    done = ClauseAdapter(rows.T.alias("s")).traverse(change).cte("done")
    event, entry = _trail(done, TRAIL_RPC, lease_digest=lease_digest, with_lease=with_lease)
    return select(*done.c).add_cte(
        insert(EVENTS).from_select(_EVENT_COLUMNS, event).cte("event"),
        insert(CHANGES).from_select(_ENTRY_COLUMNS, entry).cte("entry"),
    )


def handover_with_trail(
    release: Update, candidate: Select[Any], grant_through: Callable[[Select[Any]], Update]
) -> CompoundSelect:
    """A release and the grant of the next due session, one statement with both trails.

    `release` is a holder's release (an UPDATE ... RETURNING every column, its lease the
    statement's p_lease_id); `candidate` picks the row to grant (user_id and
    previous_lease_id, locked with SKIP LOCKED), and is only looked at when the release
    matched a row: a refused release grants nothing; `grant_through` makes the grant's
    UPDATE of the row a candidate picks. Returns one row per change, "released" or
    "granted" in its `part` column, the granted row with its previous_lease_id.

    Both changes see the statement's one snapshot, in which the released row still holds its
    lease, so it is never the one granted (it was just attempted, so it would not be due).
    Each table gets one INSERT whose rows are the release's, then the grant's (the branches
    of a UNION ALL run in order), so the trail lists them in the order a ReleaseLease and a
    LeaseNextSession would have written them."""
    released = ClauseAdapter(rows.T.alias("r")).traverse(release).cte("released")
    gated = candidate.where(exists(select(literal_column("1")).select_from(released)))
    granted = ClauseAdapter(rows.T.alias("s")).traverse(grant_through(gated)).cte("granted")
    release_event, release_entry = _trail(
        released,
        _constant(AuditedRpc.RELEASE_LEASE.value),
        lease_digest=rows.LEASE_ID,
        with_lease=False,
    )
    grant_event, grant_entry = _trail(
        granted,
        _constant(AuditedRpc.LEASE_NEXT_SESSION.value),
        lease_digest=None,
        with_lease=True,
    )
    return union_all(
        select(
            _constant(RELEASED).label("part"),
            *released.c,
            null().label("previous_lease_id"),
        ),
        select(_constant(GRANTED).label("part"), *granted.c),
    ).add_cte(
        insert(EVENTS)
        .from_select(_EVENT_COLUMNS, union_all(release_event, grant_event))
        .cte("event"),
        insert(CHANGES)
        .from_select(_ENTRY_COLUMNS, union_all(release_entry, grant_entry))
        .cte("entry"),
    )


_EVENT_COLUMNS: Final = [
    "occurred_at",
    "caller",
    "rpc",
    "user_id",
    "outcome_code",
    "outcome_reason",
    "lease_id",
    "fencing_token",
]
_ENTRY_COLUMNS: Final = ["occurred_at", "user_id", "rpc", "state", "status"]


def _trail(
    done: CTE,
    rpc: ColumnElement[Any],
    *,
    lease_digest: ColumnElement[Any] | None,
    with_lease: bool,
) -> tuple[Select[Any], Select[Any]]:
    """The audit event and change-log entry of the row `done` returned, as the SELECTs that
    INSERT them (_EVENT_COLUMNS, _ENTRY_COLUMNS)."""
    digest = done.c.lease_id if lease_digest is None else lease_digest
    event = select(
        rows.NOW,
        TRAIL_CALLER,
        rpc,
        done.c.user_id,
        _constant(OK.code),
        _constant(OK.reason),
        digest,
        done.c.fencing_token,
    )
    entry = select(
        rows.NOW,
        done.c.user_id,
        rpc,
        cast(done.c.state, CHANGES.c.state.type),
        _status_json(done, with_lease=with_lease),
    )
    return event, entry
