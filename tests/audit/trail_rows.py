"""Read the change log (garmin_session_change) and the audit trail directly."""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from auth_service.storage.database import create_engine_for
from auth_service.storage.models import GarminAuditEvent, GarminSessionChange


@dataclass(frozen=True)
class Entry:
    user_id: str
    rpc: str
    state: str
    status: dict


def entries(database_url: str, user_id: str | None = None) -> list[Entry]:
    engine = create_engine_for(database_url)
    try:
        with Session(engine) as session:
            query = select(GarminSessionChange).order_by(GarminSessionChange.id)
            if user_id is not None:
                query = query.where(GarminSessionChange.user_id == user_id)
            return [
                Entry(row.user_id, row.rpc, row.state, json.loads(row.status))
                for row in session.scalars(query)
            ]
    finally:
        engine.dispose()


def events(database_url: str, user_id: str | None = None) -> list[tuple[str, str | None, str, str]]:
    engine = create_engine_for(database_url)
    try:
        with Session(engine) as session:
            query = select(GarminAuditEvent).order_by(GarminAuditEvent.id)
            if user_id is not None:
                query = query.where(GarminAuditEvent.user_id == user_id)
            return [
                (row.rpc, row.user_id, row.outcome_code, row.outcome_reason)
                for row in session.scalars(query)
            ]
    finally:
        engine.dispose()
