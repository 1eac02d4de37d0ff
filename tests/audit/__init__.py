"""Helpers of the audit-trail tests: read the events a test caused, insert events directly,
and connect users through the real gRPC server and the Garmin emulator."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from auth_service.domain.models import GarminTokens, LoginSucceeded
from auth_service.storage.database import create_engine_for
from auth_service.storage.models import GarminAuditEvent
from auth_service.upstream.garth.provider import GarthUpstream
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_client.session_proto import tokens_to_proto
from garmin_emulator import GarminEmulator
from tests.fixtures.servers import Replica

PASSWORD = "audit-password-1234"


@dataclass(frozen=True)
class Event:
    """A stored event, detached from any session (compared field by field in tests)."""

    id: int
    occurred_at: datetime
    caller: str
    rpc: str
    user_id: str | None
    outcome_code: str
    outcome_reason: str
    lease_id: str | None
    fencing_token: int | None

    @property
    def summary(self) -> tuple[str, str, str | None, str, str]:
        """(caller, rpc, user_id, outcome_code, outcome_reason)."""
        return (self.caller, self.rpc, self.user_id, self.outcome_code, self.outcome_reason)


def read_events(database_url: str, after_id: int = 0) -> list[Event]:
    """Every stored event with an id above `after_id`, in id order."""
    engine = create_engine_for(database_url)
    try:
        with Session(engine) as session:
            rows = session.scalars(
                select(GarminAuditEvent)
                .where(GarminAuditEvent.id > after_id)
                .order_by(GarminAuditEvent.id)
            ).all()
            return [
                Event(
                    id=row.id,
                    occurred_at=row.occurred_at,
                    caller=row.caller,
                    rpc=row.rpc,
                    user_id=row.user_id,
                    outcome_code=row.outcome_code,
                    outcome_reason=row.outcome_reason,
                    lease_id=row.lease_id,
                    fencing_token=row.fencing_token,
                )
                for row in rows
            ]
    finally:
        engine.dispose()


class AuditLog:
    """The events a test step caused: `mark()` before, `new()` after."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._last_id = 0

    def mark(self) -> None:
        events = read_events(self.database_url, self._last_id)
        if events:
            self._last_id = events[-1].id

    def new(self) -> list[Event]:
        events = read_events(self.database_url, self._last_id)
        if events:
            self._last_id = events[-1].id
        return events

    def one(self) -> Event:
        """The single event the step caused (fails if it caused none or several)."""
        events = self.new()
        assert len(events) == 1, [event.summary for event in events]
        return events[0]


@dataclass(frozen=True)
class Spec:
    """An event to insert directly."""

    occurred_at: datetime
    user_id: str | None = "u"
    rpc: str = "LeaseSession"
    caller: str = "worker-caller"


def insert_events(database_url: str, specs: Iterable[Spec]) -> None:
    engine = create_engine_for(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                insert(GarminAuditEvent),
                [
                    {
                        "occurred_at": spec.occurred_at,
                        "caller": spec.caller,
                        "rpc": spec.rpc,
                        "user_id": spec.user_id,
                        "outcome_code": "OK",
                        "outcome_reason": "OK",
                        "lease_id": None,
                        "fencing_token": None,
                    }
                    for spec in specs
                ],
            )
    finally:
        engine.dispose()


def garmin_tokens(service: Replica, garmin: GarminEmulator, email: str) -> GarminTokens:
    """Tokens Garmin issued for `email`, obtained outside the service (the user's own garth)."""
    garmin.add_user(email, PASSWORD)
    result = GarthUpstream(service.running.application.settings.upstream).login(email, PASSWORD)
    assert isinstance(result, LoginSucceeded)
    return result.tokens


def stale(tokens: GarminTokens) -> GarminTokens:
    """The same tokens with an access token that expired on our side five minutes ago."""
    expired = datetime.now(UTC) - timedelta(minutes=5)
    return dataclasses.replace(
        tokens, oauth2=dataclasses.replace(tokens.oauth2, expires_at=expired)
    )


def import_tokens(service: Replica, user_id: str, tokens: GarminTokens) -> pb.SessionStatus:
    request = pb.ImportSessionRequest(user_id=user_id, session=tokens_to_proto(tokens))
    return cast(pb.SessionStatus, service.call("ImportSession", request).status)


def connect(
    service: Replica, garmin: GarminEmulator, user_id: str, *, expired: bool = False
) -> GarminTokens:
    """Import Garmin tokens for `user_id` (its access token already expired when `expired`)."""
    tokens = garmin_tokens(service, garmin, f"{user_id}@example.com")
    if expired:
        tokens = stale(tokens)
    import_tokens(service, user_id, tokens)
    return tokens


def lease(
    service: Replica, user_id: str, holder: str = "w-1", role: str = "worker"
) -> pb.LeaseSessionResponse:
    """A grant; role "worker_full" for the full session (and ReportRefreshed under it)."""
    return cast(
        pb.LeaseSessionResponse,
        service.call(
            "LeaseSession", pb.LeaseSessionRequest(user_id=user_id, holder=holder), role=role
        ),
    )
