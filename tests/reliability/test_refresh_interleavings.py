"""Randomized interleavings of everything that refreshes a DI session, on two replicas.

Garmin's DI refresh tokens rotate: a refresh kills the refresh token it presents, and sending
a dead one again is a reuse (invalid_grant; the service would end the session). The service
exists to refresh centrally, once per rotation across replicas. Here several threads, each
driven by its own `random.Random` seeded from the test's seed, run random operations
concurrently on a few users, for a few seconds, through two replicas (two engines on one
database, SQLite and PostgreSQL) and the Garmin emulator over real HTTP:

- LeaseSession as `worker` (access token only) and as `worker_full` (the whole session),
- RefreshLease (with the holder's session version, sometimes 0: "unknown"), RenewLease,
  ReleaseLease,
- a `worker_full` holder that refreshes BY ITSELF at Garmin with the refresh token it was
  granted and reports the pair with ReportRefreshed(session_version of its grant), exactly as
  the README's lease protocol allows: only while its lease is live, and never after it asked
  RefreshLease (which rotates the token it holds),
- keep-alive passes, GetStatus(validate=True),
- ImportSession of a new token file, retried with the same file (at once, or concurrently on
  the other replica), and of an old copy of a token file (its client refreshed it since:
  Garmin rejects it, and the import must change nothing),
- the replicas' FakeClock moving on (so access tokens, refresh tokens and leases come due),
  access tokens expired at Garmin, and Garmin slow or answering 503 now and then.

Refusals the protocol allows (LEASE_HELD, LEASE_LOST, GARMIN_UNAVAILABLE after a wait, an
INVALID_ARGUMENT to a stale report, ...) are recorded, not failures. At the end:

1. The service never sent a refresh token Garmin had rotated away, but for one a client
   brought in a token file (ImportSession of an old copy: only Garmin can tell it is dead),
   and every refresh token a `worker_full` grant handed out was live at Garmin when it was
   handed out (and a holder's own refresh with it was never refused);
2. no session ended (AUTH_EXPIRED) while Garmin still held a live refresh token of the user
   (nothing here revokes a token, so no session may end at all);
3. each user's stored refresh token is live at Garmin.

The test's clock jumps stand for time passing, never for a replica stalled past its claim
(each jump is far shorter than a claim's lifetime), and the test's own holder never lets a
jump fall between its liveness check, its refresh at Garmin and its report (a real holder
renews long before its lease ends). No replica is killed (the README's documented limitation:
a replica killed between Garmin's answer and the commit loses the session).

With imports, this test found that an import retried after the session had rotated more
than once since the first import was not known for a retry: its dead token was installed and
refreshed, and the session ended AUTH_EXPIRED. The row now keeps the latest rotations
(views.rotated_history; tests/refresh/test_import_retry_keeps_the_account.py). Then that an
old copy imported while a lease held the session ended it, and that a holder's report racing
an import answered INVALID_ARGUMENT instead of LEASE_LOST: a token file is now refreshed
before anything is stored (tests/refresh/test_import_checks_the_file_first.py), and a report
checks its lease in the row it locked (tests/leases/test_report_refreshed_race.py).

More seeds: GARMIN_AUTH_TEST_INTERLEAVING_SEEDS="1,2,3" (comma-separated) replaces SEEDS;
GARMIN_AUTH_TEST_INTERLEAVING_SKIP="op,..." leaves those operations out (by default none).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from auth_service.crypto import Keyring
from auth_service.domain.clock import FakeClock
from auth_service.domain.errors import DomainError
from auth_service.domain.models import GarminTokens, LeaseGrant, SessionState
from auth_service.domain.policies import DiSettings, LoginFlow, RefreshSettings
from auth_service.services.lease_refresh import LeaseRefresh
from auth_service.services.session_import import SessionImport
from auth_service.services.unit_of_work import UnitsOfWork
from auth_service.storage.database import create_engine_for, session_factory
from auth_service.storage.secrets import SecretBox
from auth_service.storage.unit_of_work import SqlStore
from auth_service.upstream.di.garminconnect import tokens_from_garminconnect
from auth_service.upstream.di.provider import DiUpstream
from auth_service.upstream.garth.provider import GarthUpstream
from auth_service.upstream.router import UpstreamRouter
from garmin_client.settings import UpstreamSettings
from garmin_emulator import DI_TOKEN_PATH, DiOptions, GarminEmulator
from tests.fixtures.emulators import scanned_emulator
from tests.leases import read_row, stored_tokens
from tests.refresh import DiAccounts, Replica, build_replica

pytestmark = pytest.mark.timeout(180)

log = logging.getLogger(__name__)

SEEDS = (11, 23, 37)
SEEDS_ENV = "GARMIN_AUTH_TEST_INTERLEAVING_SEEDS"
SKIP_ENV = "GARMIN_AUTH_TEST_INTERLEAVING_SKIP"
# How long the threads start new operations, per seed (3 seeds: about 12 s per backend).
RUN_SECONDS = 4.0
THREADS = 4
USERS = 3

CONSUMER_KEY = "interleavings-consumer-key"
CONSUMER_SECRET = "interleavings-consumer-secret"
# Garmin's answer to one call must never come after the replica gave up on it (the emulator
# still rotates a token whose answer is never read): the injected delays stay far below this.
UPSTREAM_TIMEOUT_SECONDS = 5.0
MAX_GARMIN_DELAY_SECONDS = 0.4
# Short lifetimes (on the FakeClock, and at Garmin in real time, which the run never reaches)
# so that clock jumps make access tokens, refresh tokens (keep-alive) and leases come due.
ACCESS_LIFETIME_SECONDS = 60
REFRESH_LIFETIME_SECONDS = 400
SETTINGS = RefreshSettings(
    concurrency=4,
    claim_seconds=10.0,
    wait_seconds=3.0,
    # A claim lives claim_seconds + commit_retry_seconds (on the FakeClock).
    commit_retry_seconds=1800.0,
    keepalive_window_seconds=250.0,
    keepalive_rate=100.0,
    keepalive_retry_seconds=60.0,
    validate_interval_seconds=0.0,
)
# The FakeClock moves in jumps of at most MAX_CLOCK_STEP_SECONDS and at most
# CLOCK_RATE seconds per real second (plus one jump): a claim expires only when its holder
# died (README), which this test never simulates, so no claim may expire while its holder's
# call to Garmin (UPSTREAM_TIMEOUT_SECONDS at worst) and its commit run.
MAX_CLOCK_STEP_SECONDS = 30.0
CLOCK_RATE = 60.0
assert (
    SETTINGS.claim_lifetime_seconds
    > (CLOCK_RATE * (UPSTREAM_TIMEOUT_SECONDS + 5.0) + MAX_CLOCK_STEP_SECONDS) * 2
)
# The test's holder refreshes by itself only with this much of its lease left.
HOLDER_MARGIN = timedelta(seconds=5)
LEASE_TTLS = (5.0, 10.0, 20.0, 45.0)


def _seeds() -> list[int]:
    configured = os.environ.get(SEEDS_ENV, "").strip()
    if not configured:
        return list(SEEDS)
    return [int(part) for part in configured.split(",") if part.strip()]


def _skipped() -> set[str]:
    configured = os.environ.get(SKIP_ENV, "")
    return {part.strip() for part in configured.split(",") if part.strip()}


# --- fixtures: the emulator, the service's upstream on the FakeClock, two replicas --------


@pytest.fixture
def clock() -> FakeClock:
    # Garmin's tokens carry real expiry times, so the service's clock starts at real time.
    return FakeClock(datetime.now(UTC))


@pytest.fixture
def box(keyring: Keyring) -> SecretBox:
    return SecretBox(keyring)


@pytest.fixture
def emulator() -> Iterator[GarminEmulator]:
    options = DiOptions(
        access_token_expires_in=ACCESS_LIFETIME_SECONDS,
        refresh_token_expires_in=REFRESH_LIFETIME_SECONDS,
    )
    with scanned_emulator(
        consumer_key=CONSUMER_KEY, consumer_secret=CONSUMER_SECRET, di=options
    ) as running:
        yield running


def _digest(token: str) -> str:
    """A short name of a refresh token for the report (never the token)."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


# Functions whose presence on the stack names who asked for a refresh at Garmin.
_CALLERS = (
    "own_refresh",
    "hand_out",
    "refresh_lease",
    "run_once",
    "get_status",
    "import_session",
)


class RecordingRouter(UpstreamRouter):
    """The service's router, recording each DI refresh: who asked, which refresh token it
    presented and what Garmin answered (to name the refresh that reused a token)."""

    def __init__(self, *, garth: GarthUpstream, di: DiUpstream, login_flow: LoginFlow) -> None:
        super().__init__(garth=garth, di=di, login_flow=login_flow)
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.refreshes: list[tuple[float, str, str, str, str]] = []

    def refresh(self, tokens: GarminTokens) -> GarminTokens:
        names = {frame.name for frame in traceback.extract_stack(limit=40)}
        asker = next((name for name in _CALLERS if name in names), "?")
        presented = _digest(tokens.oauth2.refresh_token)
        try:
            fresh = super().refresh(tokens)
        except Exception as exc:
            self._record(asker, presented, type(exc).__name__)
            raise
        self._record(asker, presented, f"-> {_digest(fresh.oauth2.refresh_token)}")
        return fresh

    def _record(self, asker: str, presented: str, outcome: str) -> None:
        with self.lock:
            self.refreshes.append(
                (
                    time.monotonic() - self.started,
                    threading.current_thread().name,
                    asker,
                    presented,
                    outcome,
                )
            )

    def reused_tokens(self) -> set[str]:
        """The digests of the refresh tokens presented after an earlier refresh rotated them."""
        with self.lock:
            records = list(self.refreshes)
        rotated: set[str] = set()
        reused: set[str] = set()
        for _, _, _, presented, outcome in records:
            if presented in rotated and not outcome.startswith("->"):
                reused.add(presented)
            if outcome.startswith("->"):
                rotated.add(presented)
        return reused

    def reused(self) -> list[str]:
        """The refreshes that presented a token an earlier refresh had rotated away."""
        lines: list[str] = []
        with self.lock:
            records = list(self.refreshes)
        rotated: dict[str, tuple[float, str, str, str, str]] = {}
        for record in records:
            _, _, _, presented, outcome = record
            if presented in rotated and not outcome.startswith("->"):
                lines.append(f"  rotated by: {_refresh_line(rotated[presented])}")
                lines.append(f"  reused by:  {_refresh_line(record)}")
            if outcome.startswith("->"):
                rotated[presented] = record
        return lines


def _refresh_line(record: tuple[float, str, str, str, str]) -> str:
    at, thread, asker, presented, outcome = record
    return f"{at:7.3f} [{thread}] {asker} presented {presented} {outcome}"


@pytest.fixture
def upstream(emulator: GarminEmulator, clock: FakeClock) -> RecordingRouter:
    """The service's providers, the DI one on the replicas' clock (token expiries, as the
    service computes them, are then on the clock the test moves)."""
    settings = UpstreamSettings(
        consumer_key=CONSUMER_KEY,
        consumer_secret=CONSUMER_SECRET,
        base_url=emulator.url,
        timeout_seconds=UPSTREAM_TIMEOUT_SECONDS,
        retries=0,
    )
    return RecordingRouter(
        garth=GarthUpstream(settings),
        di=DiUpstream(settings, DiSettings(plain_http=True), clock=clock),
        login_flow=LoginFlow.DI,
    )


@pytest.fixture
def second_engine(database_url: str) -> Iterator[Engine]:
    """The second replica's own engine (own pool, own connections) on the same database."""
    engine = create_engine_for(database_url)
    yield engine
    engine.dispose()


@dataclass
class Node:
    """One replica's use cases that the operations call."""

    name: str
    replica: Replica
    lease_refresh: LeaseRefresh
    imports: SessionImport


@pytest.fixture
def nodes(
    db_sessionmaker: sessionmaker[Session],
    second_engine: Engine,
    box: SecretBox,
    upstream: UpstreamRouter,
    clock: FakeClock,
) -> tuple[Node, Node]:
    built = []
    for name, db in (("r0", db_sessionmaker), ("r1", session_factory(second_engine))):
        replica = build_replica(db, box, upstream, clock, SETTINGS)
        uow = UnitsOfWork(SqlStore(db, box), clock)
        built.append(
            Node(
                name=name,
                replica=replica,
                lease_refresh=LeaseRefresh(uow, replica.refresher),
                imports=replica.imports,
            )
        )
    return built[0], built[1]


# --- the run's shared state ---------------------------------------------------------------


class ClockGuard:
    """Clock jumps exclude a holder's own refresh (its lease check, its call to Garmin and its
    report): a real holder renews long before its lease ends, so no lease ends inside it."""

    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._readers = 0
        self._started = time.monotonic()
        self._moved = 0.0

    @contextmanager
    def steady(self) -> Iterator[None]:
        with self._cond:
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    def advance(self, seconds: float) -> bool:
        with self._cond:
            budget = CLOCK_RATE * (time.monotonic() - self._started) + MAX_CLOCK_STEP_SECONDS
            if self._moved + seconds > budget:
                return False  # time passes no faster than CLOCK_RATE
            if not self._cond.wait_for(lambda: self._readers == 0, timeout=2.0):
                return False
            self._clock.advance(seconds)
            self._moved += seconds
            return True


@dataclass
class Held:
    """A lease a thread holds, and what the holder knows."""

    user_id: str
    lease_id: str
    expires_at: datetime
    full: bool
    tokens: GarminTokens
    version: int
    # A worker_full holder may refresh by itself until it asks RefreshLease (which rotates
    # the refresh token it holds: from then on it takes its tokens from RefreshLease).
    may_refresh_itself: bool


@dataclass
class Run:
    """What the threads share: the system under test, the log, and what went wrong."""

    seed: int
    nodes: tuple[Node, Node]
    emulator: GarminEmulator
    upstream: RecordingRouter
    clock: FakeClock
    guard: ClockGuard
    db: sessionmaker[Session]
    users: list[str]
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)
    log: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    reuses_seen: dict[str, int] = field(default_factory=dict)
    # Digests of the refresh tokens of the token files clients imported.
    client_supplied: set[str] = field(default_factory=set)
    # One client imports a user's token files, one file (and its retry) at a time: two
    # different files of one user imported at once would be two clients fighting over the
    # account, which the README tells users not to do.
    importing: dict[str, threading.Lock] = field(default_factory=dict)

    def note(self, actor: str, op: str, user: str, outcome: str) -> None:
        line = f"{time.monotonic() - self.started:7.3f} {actor:>4} {op:<15} {user:<12} {outcome}"
        with self.lock:
            self.log.append(line)
            self.outcomes[f"{op}: {outcome.split(' ', maxsplit=1)[0]}"] += 1

    def violation(self, text: str) -> None:
        with self.lock:
            self.violations.append(text)
            self.log.append(f"{time.monotonic() - self.started:7.3f} VIOLATION {text}")

    def check_reuses(self, after: str) -> None:
        """Log the first operation after which Garmin counted a new reuse (attribution is
        approximate: operations of other threads run at the same time)."""
        for user in self.users:
            count = self.emulator.refresh_token_reuses(DiAccounts.email(user))
            with self.lock:
                if count > self.reuses_seen.get(user, 0):
                    self.reuses_seen[user] = count
                    self.log.append(
                        f"{time.monotonic() - self.started:7.3f} REUSE #{count} of {user}, "
                        f"noticed after: {after}"
                    )

    def live(self, user: str) -> set[str]:
        return set(self.emulator.live_refresh_tokens(DiAccounts.email(user)))


# Access tokens Garmin issued at least this long ago are the ones expire_access expires.
FRESH_ACCESS_SECONDS = 3.0


def _expire_old_access_tokens(emulator: GarminEmulator, email: str) -> int:
    """Expire at Garmin the user's access tokens issued FRESH_ACCESS_SECONDS ago or more.

    The emulator's expire_access_tokens expires every token, also one a refresh issued a
    millisecond ago; the service takes a 401 to a token it has just refreshed for Garmin's
    definite "no" (README, the lease protocol, step 4) and ends the session, which real
    Garmin (whose access tokens expire by age) never asks for. So only older tokens here."""
    key = email.lower()
    state = emulator._state  # private: no public control expires tokens by age
    with state.lock:
        now = time.time()
        issued_before = now + ACCESS_LIFETIME_SECONDS - FRESH_ACCESS_SECONDS
        old = [
            grant
            for grant in state.access.values()
            if grant.email == key and now < grant.expires_at <= issued_before
        ]
        for grant in old:
            grant.expires_at = now - 1
    return len(old)


def _refusal(exc: DomainError) -> str:
    return type(exc).__name__


# --- the operations -----------------------------------------------------------------------


class Actor:
    """One thread: a sync worker holding at most one lease, doing the other operations too."""

    def __init__(self, run: Run, index: int) -> None:
        self.run = run
        self.name = f"t{index}"
        self.holder = f"worker-{index}"
        # Reproducible choices, not secrets.
        self.rng = random.Random(run.seed * 1000 + index)  # noqa: S311
        self.held: Held | None = None

    def node(self) -> Node:
        return self.rng.choice(self.run.nodes)

    def loop(self, until: float) -> None:
        while time.monotonic() < until:
            op = self.pick()
            try:
                op()
            except Exception as exc:  # noqa: BLE001 - an unexpected error is a finding
                self.run.violation(f"{self.name} {op.__name__} raised {exc!r}")
            self.run.check_reuses(f"{self.name} {op.__name__}")
        if self.held is not None:
            self.release()

    def pick(self) -> Callable[[], None]:
        ops: list[tuple[Callable[[], None], float]] = [
            (self.get_status_validate, 1.5),
            (self.keepalive_pass, 1.0),
            (self.advance_clock, 2.0),
            (self.expire_access_at_garmin, 0.5),
            (self.import_retried, 0.3),
            (self.import_old_copy, 0.2),
            (self.garmin_hiccup, 0.4),
        ]
        if self.held is None:
            ops += [(self.lease_worker, 3.0), (self.lease_worker_full, 3.0)]
        else:
            ops += [(self.refresh_lease, 2.0), (self.renew, 0.7), (self.release, 1.5)]
            if self.held.full and self.held.may_refresh_itself:
                ops.append((self.own_refresh, 2.5))
        skipped = _skipped()
        ops = [(op, weight) for op, weight in ops if op.__name__ not in skipped]
        chosen: Callable[[], None] = self.rng.choices(
            [op for op, _ in ops], weights=[weight for _, weight in ops]
        )[0]
        return chosen

    # --- grants ---------------------------------------------------------------------------

    def lease_worker(self) -> None:
        self._lease(full=False)

    def lease_worker_full(self) -> None:
        self._lease(full=True)

    def _lease(self, *, full: bool) -> None:
        run, user, node = self.run, self.rng.choice(self.run.users), self.node()
        op = "lease_full" if full else "lease_worker"
        ttl = timedelta(seconds=self.rng.choice(LEASE_TTLS))
        try:
            grant = node.replica.leases.lease_session(
                user, self.holder, ttl, with_refresh_token=full
            )
        except DomainError as exc:
            run.note(self.name, op, user, f"{_refusal(exc)} on {node.name}")
            return
        assert grant.lease.lease_id is not None
        self.held = Held(
            user_id=user,
            lease_id=grant.lease.lease_id,
            expires_at=grant.lease.expires_at,
            full=full,
            tokens=grant.tokens,
            version=grant.status.session_version,
            may_refresh_itself=full,
        )
        checked = self._check_handed_out(grant) if full else ""
        run.note(self.name, op, user, f"OK v{grant.status.session_version} on {node.name}{checked}")

    def _check_handed_out(self, grant: LeaseGrant) -> str:
        """Invariant 1 for what a worker_full holder gets: its refresh token is live at Garmin
        (checked while its lease still lives, so nobody may have rotated it legitimately)."""
        with self.run.guard.steady():
            if self.run.clock.now() + HOLDER_MARGIN >= grant.lease.expires_at:
                return " (lease ending: token not checked)"
            if grant.tokens.oauth2.refresh_token not in self.run.live(grant.lease.user_id):
                self.run.violation(
                    f"{self.name}: a worker_full grant of {grant.lease.user_id} "
                    f"(v{grant.status.session_version}) handed out a refresh token that is "
                    "not live at Garmin"
                )
                return " DEAD TOKEN HANDED OUT"
        return " (token live)"

    # --- the holder's calls ---------------------------------------------------------------

    def refresh_lease(self) -> None:
        held, node = self.held, self.node()
        assert held is not None
        version = 0 if self.rng.random() < 0.1 else held.version
        # From now on the refresh token this holder may hold is (about to be) rotated away.
        held.may_refresh_itself = False
        try:
            answer = node.lease_refresh.refresh_lease(held.lease_id, version)
        except DomainError as exc:
            self.run.note(
                self.name, "refresh_lease", held.user_id, f"{_refusal(exc)} (asked v{version})"
            )
            self._drop_if_lost(exc)
            return
        held.version = answer.status.session_version
        self.run.note(
            self.name,
            "refresh_lease",
            held.user_id,
            f"OK asked v{version} -> v{held.version} on {node.name}",
        )

    def own_refresh(self) -> None:
        """A worker_full holder refreshes at Garmin with the refresh token it holds, then
        reports the pair with the version it refreshed (README, the lease protocol)."""
        run, held, node = self.run, self.held, self.node()
        assert held is not None
        assert held.may_refresh_itself
        with run.guard.steady():
            if run.clock.now() + HOLDER_MARGIN >= held.expires_at:
                run.note(self.name, "own_refresh", held.user_id, "skipped (lease ending)")
                return
            try:
                own = run.upstream.refresh(held.tokens)
            except DomainError as exc:
                outcome = _refusal(exc)
                if outcome == "GarminSessionRejected":
                    run.violation(
                        f"{self.name}: Garmin refused the refresh token that the worker_full "
                        f"lease of {held.user_id} (v{held.version}) holds"
                    )
                run.note(self.name, "own_refresh", held.user_id, f"{outcome} at Garmin")
                return
            try:
                status = node.replica.leases.report_refreshed(
                    held.lease_id, own, session_version=held.version
                )
            except DomainError as exc:
                # The pair the holder rotated is lost; the token the row holds is the one the
                # holder just killed unless the row has left that session behind.
                run.note(
                    self.name,
                    "own_refresh",
                    held.user_id,
                    f"report {_refusal(exc)} (v{held.version}) on {node.name}",
                )
                # It holds the pair Garmin just gave it, which the service does not know:
                # from here on it takes its tokens from RefreshLease (a second refresh of its
                # own would present the token it has just rotated away).
                held.tokens, held.may_refresh_itself = own, False
                self._report_refused(held, exc)
                return
        run.note(
            self.name,
            "own_refresh",
            held.user_id,
            f"OK v{held.version} -> v{status.session_version} on {node.name}",
        )
        held.tokens, held.version = own, status.session_version

    def _report_refused(self, held: Held, exc: DomainError) -> None:
        """A report refused under a live lease means the service rotated (or replaced) the
        session under its holder; say which (the token the holder killed must not be the
        stored one)."""
        row = read_row(self.run.db, held.user_id)
        self.run.note(
            self.name,
            "own_refresh",
            held.user_id,
            f"after refusal: row v{row.session_version} {row.state.value}",
        )
        self._drop_if_lost(exc)

    def renew(self) -> None:
        held, node = self.held, self.node()
        assert held is not None
        ttl = timedelta(seconds=self.rng.choice(LEASE_TTLS))
        try:
            lease = node.replica.leases.renew_lease(held.lease_id, ttl)
        except DomainError as exc:
            self.run.note(self.name, "renew", held.user_id, _refusal(exc))
            self._drop_if_lost(exc)
            return
        held.expires_at = lease.expires_at
        self.run.note(self.name, "renew", held.user_id, f"OK on {node.name}")

    def release(self) -> None:
        held, node = self.held, self.node()
        assert held is not None
        self.held = None
        synced = self.run.clock.now() if self.rng.random() < 0.7 else None
        try:
            node.replica.leases.release_lease(held.lease_id, synced)
        except DomainError as exc:
            self.run.note(self.name, "release", held.user_id, _refusal(exc))
            return
        self.run.note(self.name, "release", held.user_id, f"OK on {node.name}")

    def _drop_if_lost(self, exc: DomainError) -> None:
        if type(exc).__name__ in {"LeaseLost", "SessionNotActive"}:
            self.held = None

    # --- everything else ------------------------------------------------------------------

    def get_status_validate(self) -> None:
        user, node = self.rng.choice(self.run.users), self.node()
        try:
            status = node.replica.sessions.get_status(user, validate=True)
        except DomainError as exc:
            self.run.note(self.name, "get_status", user, _refusal(exc))
            return
        self.run.note(
            self.name, "get_status", user, f"{status.state.value} v{status.session_version}"
        )

    def keepalive_pass(self) -> None:
        node = self.node()
        report = node.replica.keepalive.run_once()
        self.run.note(
            self.name,
            "keepalive",
            "-",
            f"ran={report.ran} refreshed={report.refreshed} skipped={report.skipped} "
            f"failed={report.failed} ended={report.ended} deferred={report.deferred}",
        )

    def advance_clock(self) -> None:
        seconds = self.rng.uniform(2.0, MAX_CLOCK_STEP_SECONDS)
        moved = self.run.guard.advance(seconds)
        self.run.note(self.name, "advance_clock", "-", f"moved={moved} {seconds:.0f}s")

    def expire_access_at_garmin(self) -> None:
        user = self.rng.choice(self.run.users)
        expired = _expire_old_access_tokens(self.run.emulator, DiAccounts.email(user))
        self.run.note(self.name, "expire_access", user, f"done ({expired} token(s))")

    def garmin_hiccup(self) -> None:
        if self.rng.random() < 0.25:
            self.run.emulator.fail_next(DI_TOKEN_PATH, 503)
            self.run.note(self.name, "garmin_hiccup", "-", "next DI token call: 503")
            return
        delay = self.rng.uniform(0.05, MAX_GARMIN_DELAY_SECONDS)
        self.run.emulator.fail_next(DI_TOKEN_PATH, None, delay=delay)
        self.run.note(self.name, "garmin_hiccup", "-", f"next DI token call: slow {delay:.2f}s")

    def import_retried(self) -> None:
        """A new token file imported, and the same file retried: concurrently on the other
        replica (the client gave up waiting), or right after it."""
        run, user = self.run, self.rng.choice(self.run.users)
        tokens = run.emulator.garminconnect_tokens(DiAccounts.email(user))
        with run.lock:
            run.client_supplied.add(_digest(tokens["di_refresh_token"]))
        token_file = json.dumps(tokens)
        first, second = (run.nodes[0], run.nodes[1]) if self.rng.random() < 0.5 else run.nodes[::-1]
        answers: list[str] = []

        def attempt(node: Node, label: str) -> None:
            try:
                status = node.imports.import_session(user, garminconnect_tokens=token_file)
            except DomainError as exc:
                answers.append(f"{label} {_refusal(exc)}")
                return
            answers.append(f"{label} {status.state.value} v{status.session_version}")

        with run.lock:
            one_client = run.importing.setdefault(user, threading.Lock())
        with one_client:
            if self.rng.random() < 0.5:
                retry = threading.Thread(target=attempt, args=(second, "retry"))
                retry.start()
                attempt(first, "first")
                retry.join(30)
                how = "concurrent"
            else:
                attempt(first, "first")
                attempt(second, "retry")
                how = "sequential"
        run.note(self.name, "import_retried", user, f"{how}: {'; '.join(answers)}")

    def import_old_copy(self) -> None:
        """An old copy of a token file: its client refreshed once more after it was saved.
        Garmin rejects its refresh token, so the import must change nothing."""
        run, user = self.run, self.rng.choice(self.run.users)
        tokens = run.emulator.garminconnect_tokens(DiAccounts.email(user))
        with run.lock:
            run.client_supplied.add(_digest(tokens["di_refresh_token"]))
        token_file = json.dumps(tokens)
        # Its client's refresh: the file's refresh token is dead from here on.
        try:
            run.upstream.refresh(tokens_from_garminconnect(token_file))
        except DomainError as exc:  # a Garmin hiccup the test injected: no old copy then
            run.note(self.name, "import_old_copy", user, f"not made ({_refusal(exc)})")
            return
        with run.lock:
            one_client = run.importing.setdefault(user, threading.Lock())
        with one_client:
            try:
                status = self.node().imports.import_session(user, garminconnect_tokens=token_file)
            except DomainError as exc:
                run.note(self.name, "import_old_copy", user, _refusal(exc))
                return
        run.violation(f"{self.name} imported an old copy for {user}: v{status.session_version}")


# --- the test -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", _seeds())
def test_random_interleavings_never_reuse_a_refresh_token_nor_end_a_good_session(
    seed: int,
    nodes: tuple[Node, Node],
    emulator: GarminEmulator,
    upstream: RecordingRouter,
    clock: FakeClock,
    db_sessionmaker: sessionmaker[Session],
    box: SecretBox,
) -> None:
    rng = random.Random(seed)  # noqa: S311 - reproducible choices, not secrets
    accounts = DiAccounts(emulator, clock, db_sessionmaker, box)
    users = [f"ri-{seed}-u{index}" for index in range(USERS)]
    for user in users:
        accounts.seed(
            user,
            access_in=timedelta(seconds=rng.uniform(40, ACCESS_LIFETIME_SECONDS)),
            refresh_in=timedelta(seconds=REFRESH_LIFETIME_SECONDS),
        )
    run = Run(
        seed=seed,
        nodes=nodes,
        emulator=emulator,
        upstream=upstream,
        clock=clock,
        guard=ClockGuard(clock),
        db=db_sessionmaker,
        users=users,
    )
    actors = [Actor(run, index) for index in range(THREADS)]
    until = time.monotonic() + RUN_SECONDS
    threads = [
        threading.Thread(target=actor.loop, args=(until,), name=actor.name) for actor in actors
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "an actor is stuck"
    emulator.clear_faults()

    report = _report(run, accounts, db_sessionmaker, box)
    log.info("%s", report.split("\n--- before", 1)[0].split("\nlog (last", 1)[0])
    assert not run.violations, report
    # 1. The service (and the holders it served) never sent a refresh token Garmin had rotated
    # away, but for old copies that clients imported (only Garmin can tell those are dead).
    assert upstream.reused_tokens() <= run.client_supplied, report
    for user in users:
        email = accounts.email(user)
        row = read_row(db_sessionmaker, user)
        live = emulator.live_refresh_tokens(email)
        # 2. A session ends only when Garmin holds no live refresh token for the user.
        assert row.state is SessionState.ACTIVE or not live, report
        # 3. The stored refresh token is live at Garmin.
        stored = stored_tokens(db_sessionmaker, box, user)
        assert stored is not None, report
        assert stored.oauth2.refresh_token in live, report
    # The run did what it is for: refreshes at Garmin, from several paths.
    assert sum(accounts.refreshes(user) for user in users) >= 3, report


def _report(run: Run, accounts: DiAccounts, db: sessionmaker[Session], box: SecretBox) -> str:
    lines = [f"seed {run.seed}; violations: {run.violations}"]
    for user in run.users:
        row = read_row(db, user)
        stored = stored_tokens(db, box, user)
        live = run.live(user)
        lines.append(
            f"{user}: state={row.state.value} v{row.session_version} "
            f"reason={row.invalidated_reason!r} refreshes={accounts.refreshes(user)} "
            f"reuses={accounts.reuses(user)} live_tokens={len(live)} "
            f"stored_live={stored is not None and stored.oauth2.refresh_token in live}"
        )
    lines.append("outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(run.outcomes.items())))
    lines.append("refreshes at Garmin that presented a rotated-away refresh token:")
    lines.extend(run.upstream.reused() or ["  none"])
    for index, line in enumerate(run.log):
        if " REUSE " in line or " VIOLATION " in line:
            lines.append(f"--- before log line {index}:")
            lines.extend(run.log[max(0, index - 25) : index + 1])
    lines.append("log (last 40):")
    lines.extend(run.log[-40:])
    return "\n".join(lines)
