"""The account cooldowns Garmin's 429s start (auth_service.storage.limit_repository), on both
backends: what a second 429 does to a running cooldown."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from auth_service.domain.garmin_limits import GarminEndpoint
from auth_service.storage.limit_repository import SqlGarminLimitRepository

SSO, DI_TOKEN = GarminEndpoint.SSO, GarminEndpoint.DI_TOKEN


def _cooldown(
    db: sessionmaker[Session], user_id: str, endpoint: GarminEndpoint, minutes: int
) -> None:
    now = datetime.now(UTC)
    with db.begin() as session:
        SqlGarminLimitRepository(session).start_account_cooldown(
            user_id, endpoint, now + timedelta(minutes=minutes), now
        )


def test_a_cooldown_holding_back_every_call_is_never_narrowed_to_sign_ins(
    db_sessionmaker: sessionmaker[Session],
) -> None:
    """A sign-in's 429 holds back sign-ins only; any other endpoint's, every call of the
    account (services.garmin_gate._binds). A second 429 may lengthen a cooldown or widen it,
    never narrow it: before, a longer SSO 429 during a token endpoint's cooldown turned it
    into a sign-in cooldown, and refreshes went to Garmin while it ran."""
    _cooldown(db_sessionmaker, "wide", DI_TOKEN, 1)
    _cooldown(db_sessionmaker, "wide", SSO, 10)
    _cooldown(db_sessionmaker, "widened", SSO, 10)
    _cooldown(db_sessionmaker, "widened", DI_TOKEN, 1)
    _cooldown(db_sessionmaker, "sign-in", SSO, 1)
    _cooldown(db_sessionmaker, "sign-in", SSO, 10)
    with db_sessionmaker() as session:
        limits = SqlGarminLimitRepository(session)
        accounts = {user: limits.account(user) for user in ("wide", "widened", "sign-in")}
    now = datetime.now(UTC)
    for user, endpoint in (("wide", DI_TOKEN), ("widened", DI_TOKEN), ("sign-in", SSO)):
        account = accounts[user]
        assert account is not None
        assert account.endpoint is endpoint, user
        assert account.cooling_until is not None
        assert account.cooling_until > now + timedelta(minutes=9), user  # the longer one
