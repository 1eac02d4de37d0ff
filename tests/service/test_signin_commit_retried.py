"""A session Garmin has just issued for a sign-in is waited into a database that refuses its
commit for a moment: ExchangeServiceTicket and Login without MFA, as SubmitMfa, ImportSession
and the refresher already did (commit_retried).

Before: ExchangeServiceTicket and Login stored in one plain transaction. A database blip at
that moment answered DATABASE_UNAVAILABLE and dropped the session, although Garmin had spent
the single-use ticket: the retry the caller is told to make was refused
(SERVICE_TICKET_REJECTED), and a Login retry spent another of the account's logins and
another password sign-in at Garmin's SSO.

The fault is real: the service's PostgreSQL connection is terminated (pg_terminate_backend)
while it waits to store the session. (From a read-only review.)
"""

from __future__ import annotations

import threading
import time
from typing import Any, cast

import grpc
import psycopg
import pytest
from sqlalchemy.engine import make_url

from auth_service.domain.policies import LoginFlow
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import VERIFY_MFA_PATH, GarminEmulator
from tests.fixtures.servers import Replica, ServiceFactory
from tests.service.test_login import PASSWORD, login

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def database_url(pg_database_url: str) -> str:
    """PostgreSQL only: the fault is a terminated server connection."""
    return pg_database_url


def _libpq(url: str) -> str:
    parsed = make_url(url)
    return (
        f"host={parsed.host or '127.0.0.1'} port={parsed.port or 5432} "
        f"dbname={parsed.database} user={parsed.username or 'postgres'}"
    )


class RowLockThenKill:
    """Holds the user's session row locked; the service's backend that waits for it is
    terminated (a database restart / failover as the service sees it), then the lock goes."""

    def __init__(self, url: str, user_id: str) -> None:
        self._dsn = _libpq(url)
        self._user_id = user_id
        self.killed: list[int] = []

    def __enter__(self) -> RowLockThenKill:
        self._holder = psycopg.connect(self._dsn)
        self._holder.execute(
            "SELECT 1 FROM garmin_authentication_state WHERE user_id = %s FOR UPDATE",
            (self._user_id,),
        )
        return self

    def kill_the_waiter(self, deadline: float = 15.0) -> None:
        me = self._holder.info.backend_pid
        with psycopg.connect(self._dsn, autocommit=True) as admin:
            end = time.monotonic() + deadline
            while time.monotonic() < end:
                rows = admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> %s",
                    (me,),
                ).fetchall()
                if rows:
                    for (pid,) in rows:
                        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                        self.killed.append(pid)
                    return
                time.sleep(0.02)
        raise AssertionError("the service never waited for the user's row")

    def __exit__(self, *exc: Any) -> None:
        self._holder.rollback()
        self._holder.close()


def _in_thread(call: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["answer"] = call()
        except grpc.RpcError as error:
            out["error"] = f"{error.code().name}: {error.details()}"

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def _status(replica: Replica, user_id: str) -> pb.SessionStatus:
    answer = cast(
        pb.GetStatusResponse, replica.call("GetStatus", pb.GetStatusRequest(user_id=user_id))
    )
    return answer.status


def test_a_database_blip_at_the_ticket_commit_is_waited_out(
    service_factory: ServiceFactory, garmin: GarminEmulator, database_url: str
) -> None:
    replica = service_factory.start(login_flow=LoginFlow.DI)
    garmin.add_user("tix@example.com", PASSWORD)
    # The user is connected already (an earlier ticket) and reconnects with a new one.
    first = garmin.issue_ticket("tix@example.com")
    replica.call(
        "ExchangeServiceTicket",
        pb.ExchangeServiceTicketRequest(user_id="tix", service_ticket=first),
    )
    before = _status(replica, "tix").session_version

    ticket = garmin.issue_ticket("tix@example.com")
    request = pb.ExchangeServiceTicketRequest(user_id="tix", service_ticket=ticket)
    with RowLockThenKill(database_url, "tix") as fault:
        thread, out = _in_thread(lambda: replica.call("ExchangeServiceTicket", request, timeout=60))
        fault.kill_the_waiter()
    thread.join(70)
    assert fault.killed

    exchanged = garmin.ticket_exchange_count("tix@example.com")
    retried = ""
    if "error" in out:
        # What the caller is told to do for UNAVAILABLE: retry.
        try:
            replica.call("ExchangeServiceTicket", request)
            retried = "OK"
        except grpc.RpcError as error:
            retried = f"{error.code().name}"
    after = _status(replica, "tix")
    assert "error" not in out, out
    assert after.session_version > before, (
        f"Garmin exchanged the ticket ({exchanged} exchanges), the database failed once, and "
        f"the new session is lost: ExchangeServiceTicket answered {out.get('error')!r}, its "
        f"retry {retried!r}; session_version still {after.session_version}"
    )


def test_the_same_blip_at_an_mfa_commit_is_waited_out(
    service_factory: ServiceFactory, garmin: GarminEmulator, database_url: str
) -> None:
    """SubmitMfa retries the commit while its claim lasts (a guard: it did before)."""
    replica = service_factory.start(login_flow=LoginFlow.DI)
    garmin.add_user("mfx@example.com", PASSWORD, mfa=True, mfa_code="246802")
    challenge = login(replica, "mfx", "mfx@example.com").mfa_challenge_id
    request = pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="246802")
    # The row is locked once the challenge is claimed, while Garmin judges the code.
    garmin.fail_next(VERIFY_MFA_PATH, None, delay=1.0)
    before = garmin.request_count(VERIFY_MFA_PATH)
    thread, out = _in_thread(lambda: replica.call("SubmitMfa", request, timeout=60))
    while garmin.request_count(VERIFY_MFA_PATH) == before:
        time.sleep(0.01)
    with RowLockThenKill(database_url, "mfx") as fault:
        fault.kill_the_waiter()
    thread.join(70)
    assert fault.killed
    assert "error" not in out, out
    assert _status(replica, "mfx").state == pb.SESSION_STATE_ACTIVE


def test_a_database_blip_at_a_login_commit_is_waited_out(
    service_factory: ServiceFactory, garmin: GarminEmulator, database_url: str
) -> None:
    """Login without MFA: Garmin signed the user in and its ticket was exchanged."""
    replica = service_factory.start(login_flow=LoginFlow.DI)
    garmin.add_user("lgx@example.com", PASSWORD)
    first = garmin.issue_ticket("lgx@example.com")
    replica.call(
        "ExchangeServiceTicket",
        pb.ExchangeServiceTicketRequest(user_id="lgx", service_ticket=first),
    )
    before = _status(replica, "lgx").session_version
    with RowLockThenKill(database_url, "lgx") as fault:
        thread, out = _in_thread(lambda: login(replica, "lgx", "lgx@example.com"))
        fault.kill_the_waiter()
    thread.join(70)
    assert fault.killed
    after = _status(replica, "lgx")
    assert "error" not in out, out
    assert after.session_version > before, (
        f"Garmin completed the sign-in ({garmin.ticket_exchange_count('lgx@example.com')} "
        f"ticket exchanges), the database failed once, and it is lost: Login answered "
        f"{out.get('error')!r}"
    )
