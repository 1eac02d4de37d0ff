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


def test_two_cooldowns_of_different_reach_each_keep_their_end(
    db_sessionmaker: sessionmaker[Session],
) -> None:
    """A sign-in's 429 holds back sign-ins only; any other endpoint's, every call of the
    account (services.garmin_gate._cooling_for). A second 429 of the other reach neither
    narrows nor widens the first: every call waits until the end of the cooldown that
    holds back every call, sign-ins until the later of the two ends. Before, a longer SSO 429
    during a token endpoint's cooldown (or a token endpoint's 429 during a longer SSO
    cooldown) held back every call until the SSO's end, ticket exchanges and refreshes
    included."""
    _cooldown(db_sessionmaker, "wide", DI_TOKEN, 1)
    _cooldown(db_sessionmaker, "wide", SSO, 10)
    _cooldown(db_sessionmaker, "widened", SSO, 10)
    _cooldown(db_sessionmaker, "widened", DI_TOKEN, 1)
    _cooldown(db_sessionmaker, "sign-in", SSO, 1)
    _cooldown(db_sessionmaker, "sign-in", SSO, 10)
    _cooldown(db_sessionmaker, "every", DI_TOKEN, 1)
    _cooldown(db_sessionmaker, "every", DI_TOKEN, 10)
    with db_sessionmaker() as session:
        limits = SqlGarminLimitRepository(session)
        accounts = {user: limits.account(user) for user in ("wide", "widened", "sign-in", "every")}
    now = datetime.now(UTC)

    def minutes_left(user: str, *, sign_in: bool) -> int | None:
        account = accounts[user]
        assert account is not None
        ends = account.cooling_for(now, sign_in=sign_in)
        return None if ends is None else round((ends - now).total_seconds() / 60)

    reach = {
        user: (minutes_left(user, sign_in=False), minutes_left(user, sign_in=True))
        for user in accounts
    }
    assert reach == {
        "wide": (1, 10),
        "widened": (1, 10),
        "sign-in": (None, 10),
        "every": (10, 10),
    }
