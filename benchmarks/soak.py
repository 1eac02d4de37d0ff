"""Soak: N workers and two service replicas on PostgreSQL for a long while, with an invariant
checker reading the database every second. Nothing may be lost and no rule may bend.

    .venv/bin/python -m benchmarks.soak [--minutes 10] [--workers 8] [--users 200]
        [--ttl 10] [--service-revision REV]

A fresh database on the benchmark server (BENCH_POSTGRES_URL, default the local one) gets
`--users` ACTIVE sessions (tokens valid for ten years: Garmin, the emulator, is never needed).
Two `garmin-auth-service serve` processes run on it, as an operator starts them. Each worker
is its own process, a lease client like a sync worker's, looping until the time is up:

  lease (LeaseNextSession when something is due, else LeaseSession of a random user; each
  call to a random replica, as behind a load balancer) -> "sync" for a few milliseconds ->
  sometimes ReportRefreshed with new tokens, sometimes RenewLease -> ReleaseLease; one lease
  in 25 is abandoned instead (a worker that died), so takeovers after the ttl happen too.

Every second the checker reads every session row and checks: fencing tokens and session
versions never go down; a row holding a new lease id has a larger fencing token than when it
held the previous one; every session stays ACTIVE with its secrets. At the end, against the
audit trail (written in the transaction of each change): every grant a worker was told about
was committed with that fencing token; per user, each grant came after the previous lease was
released or had expired (ids give commit order); every acknowledged ReportRefreshed and
ReleaseLease was committed; each session's version counts exactly its stored reports, and its
tokens are those of its last acknowledged report (or of a later one whose answer was lost).

Output: `figure` lines (operations, answers by RPC and code, checks made) and `target` lines
(invariant violations, data lost, INTERNAL answers, replica restarts: all must be 0), like the
other benchmarks; progress on stderr. The machine has 2 cores shared by the replicas,
PostgreSQL and the workers (and whatever else runs): rates are what the box gave, not limits.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import multiprocessing
import random
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from multiprocessing.connection import Connection
from typing import Any

import grpc
import psycopg
from google.protobuf import duration_pb2, timestamp_pb2
from grpc_status import rpc_status

from auth_service.domain.lease_ids import lease_digest
from auth_service.storage.secrets import SecretBox
from benchmarks.autovacuum import AutovacuumStandIn
from benchmarks.harness import (
    TABLE,
    Credentials,
    EmulatorProcess,
    PostgresDatabase,
    Report,
    ServiceProcess,
    ServiceTree,
    Workdir,
    bench_tokens,
    free_port,
    health_status,
    log,
    seed_sessions,
    service_environment,
    user_id,
)
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_auth.v1 import garmin_auth_pb2_grpc as pb_grpc
from garmin_client.session_proto import tokens_from_proto, tokens_to_proto

RPC_TIMEOUT_SECONDS = 10.0
CHECK_INTERVAL_SECONDS = 1.0
SYNC_SECONDS = (0.0, 0.02)
REPORT_SHARE = 0.3
RENEW_SHARE = 0.05
ABANDON_SHARE = 0.04
NEXT_SHARE = 0.5
# Answers a worker may get in this soak; anything else is counted as unexpected.
EXPECTED = {
    "OK",
    "ABORTED LEASE_HELD",
    "FAILED_PRECONDITION LEASE_LOST",
    "UNAVAILABLE DATABASE_UNAVAILABLE",
}
LOGGED_FINDINGS = 20
UNKNOWN_OUTCOMES = {"UNAVAILABLE DATABASE_UNAVAILABLE", "DEADLINE_EXCEEDED", "UNAVAILABLE"}


def digest(text: str) -> str:
    """What the workers remember of a token they reported (never the token itself)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- the workers (each in its own process) -------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process does. Pickled to the child: plain values only."""

    index: int
    targets: tuple[str, ...]
    metadata: tuple[tuple[str, str], ...]
    users: int
    seconds: float
    ttl: int


@dataclass
class WorkerResult:
    """What one worker did and was told."""

    answers: Counter[str] = field(default_factory=Counter)
    # (lease_id, fencing token) of every grant the worker was answered.
    grants: list[tuple[str, int]] = field(default_factory=list)
    # (user, lease_id, token digest, outcome, monotonic end) of every ReportRefreshed sent.
    reports: list[tuple[str, str, str, str, float]] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    abandoned: int = 0


def outcome_of(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    reason = ""
    for detail in status.details if status else ():
        if detail.type_url.endswith("google.rpc.ErrorInfo"):
            from google.rpc import error_details_pb2  # noqa: PLC0415

            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
    return f"{error.code().name} {reason}".strip()


class Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.rng = random.Random(spec.index)  # noqa: S311 - spreads load, guards nothing
        self.channels = [grpc.insecure_channel(target) for target in spec.targets]
        self.stubs = [pb_grpc.GarminAuthServiceStub(channel) for channel in self.channels]
        self.result = WorkerResult()
        self.holder = f"soak-worker-{spec.index}"
        self.ttl = duration_pb2.Duration(seconds=spec.ttl)

    def call(self, rpc: str, request: Any) -> tuple[str, Any]:
        stub = self.rng.choice(self.stubs)
        try:
            answer = getattr(stub, rpc)(
                request, metadata=self.spec.metadata, timeout=RPC_TIMEOUT_SECONDS
            )
        except grpc.RpcError as error:
            outcome = outcome_of(error)
            self.result.answers[f"{rpc} {outcome}"] += 1
            return outcome, None
        self.result.answers[f"{rpc} OK"] += 1
        return "OK", answer

    def lease(self) -> Any:
        if self.rng.random() < NEXT_SHARE:
            request: Any = pb.LeaseNextSessionRequest(
                holder=self.holder, ttl=self.ttl, min_sync_interval=duration_pb2.Duration()
            )
            outcome, answer = self.call("LeaseNextSession", request)
            if outcome == "OK" and answer.HasField("lease"):
                return answer
            if outcome == "OK":  # nothing due: counted apart from the grants
                self.result.answers["LeaseNextSession OK"] -= 1
                self.result.answers["LeaseNextSession OK_NOTHING_DUE"] += 1
        user = user_id(self.rng.randrange(self.spec.users))
        request = pb.LeaseSessionRequest(user_id=user, holder=self.holder, ttl=self.ttl)
        return self.call("LeaseSession", request)[1]

    def cycle(self) -> None:
        answer = self.lease()
        if answer is None:
            time.sleep(0.005)
            return
        lease = answer.lease
        self.result.grants.append((lease.lease_id, lease.fencing_token))
        time.sleep(self.rng.uniform(*SYNC_SECONDS))
        if self.rng.random() < RENEW_SHARE:
            self.call("RenewLease", pb.RenewLeaseRequest(lease_id=lease.lease_id, ttl=self.ttl))
        if self.rng.random() < REPORT_SHARE:
            # A refresh of the granted session: new OAuth2 tokens, the same OAuth1 token (the
            # service refuses another account's).
            granted = tokens_from_proto(answer.session)
            tokens = dataclasses.replace(
                bench_tokens(datetime.now(UTC) + timedelta(days=3650)), oauth1=granted.oauth1
            )
            request = pb.ReportRefreshedRequest(
                lease_id=lease.lease_id, session=tokens_to_proto(tokens)
            )
            outcome, _ = self.call("ReportRefreshed", request)
            self.result.reports.append(
                (
                    lease.user_id,
                    lease.lease_id,
                    digest(tokens.oauth2.access_token),
                    outcome,
                    time.monotonic(),
                )
            )
        if self.rng.random() < ABANDON_SHARE:
            self.result.abandoned += 1  # a worker that died: the lease expires by itself
            return
        synced = timestamp_pb2.Timestamp()
        synced.FromDatetime(datetime.now(UTC) - timedelta(seconds=1))
        outcome, _ = self.call(
            "ReleaseLease", pb.ReleaseLeaseRequest(lease_id=lease.lease_id, synced_through=synced)
        )
        if outcome == "OK":
            self.result.released.append(lease.lease_id)

    def run(self) -> WorkerResult:
        deadline = time.monotonic() + self.spec.seconds
        try:
            while time.monotonic() < deadline:
                self.cycle()
        finally:
            for channel in self.channels:
                channel.close()
        return self.result


def _worker_main(spec: WorkerSpec, pipe: Connection) -> None:
    try:
        pipe.send(("result", Worker(spec).run()))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the run
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        pipe.close()


# --- the invariant checker (a thread of this process) ----------------------------------------


class Checker(threading.Thread):
    """Reads every session row every second and checks the rules that hold at all times."""

    def __init__(self, conninfo: str) -> None:
        super().__init__(name="invariant-checker", daemon=True)
        self.conninfo = conninfo
        self.stop = threading.Event()
        self.reads = 0
        self.unreachable = 0
        self.violations: list[str] = []
        self.last: dict[str, tuple[int, int, str | None]] = {}

    def violation(self, text: str) -> None:
        self.violations.append(text)
        log(f"INVARIANT VIOLATED: {text}")

    def run(self) -> None:
        while not self.stop.wait(CHECK_INTERVAL_SECONDS):
            try:
                with psycopg.connect(self.conninfo, connect_timeout=5) as connection:
                    rows = connection.execute(
                        f"SELECT user_id, fencing_token, session_version, lease_id, state,"
                        f" session_ciphertext IS NOT NULL FROM {TABLE}"
                    ).fetchall()
            except psycopg.Error:
                self.unreachable += 1
                continue
            self.reads += 1
            for user, fencing, version, lease_id, state, has_secret in rows:
                self.check_row(user, fencing, version, lease_id, state, has_secret)

    def check_row(
        self,
        user: str,
        fencing: int,
        version: int,
        lease_id: str | None,
        state: str,
        has_secret: bool,
    ) -> None:
        if state != "ACTIVE" or not has_secret:
            self.violation(f"{user}: {state}, secrets {'kept' if has_secret else 'gone'}")
        before = self.last.get(user)
        self.last[user] = (fencing, version, lease_id)
        if before is None:
            return
        old_fencing, old_version, old_lease = before
        if fencing < old_fencing or version < old_version:
            self.violation(
                f"{user}: (fencing, version) went back from {before[:2]} to {(fencing, version)}"
            )
        if lease_id is not None and lease_id != old_lease and fencing <= old_fencing:
            self.violation(f"{user}: a new lease kept fencing token {fencing}")

    def close(self) -> None:
        self.stop.set()
        self.join(30)


# --- the final audit ---------------------------------------------------------------------------


@dataclass
class Audit:
    """What the final audit found; the first few findings are logged as they are found."""

    grants_committed: int = 0
    data_lost: int = 0
    violations: list[str] = field(default_factory=list)

    def lost(self, what: str) -> None:
        self.data_lost += 1
        if self.data_lost <= LOGGED_FINDINGS:
            log(f"LOST: {what}")

    def violation(self, what: str) -> None:
        self.violations.append(what)
        if len(self.violations) <= LOGGED_FINDINGS:
            log(f"INVARIANT VIOLATED: {what}")


def final_audit(
    database: PostgresDatabase,
    credentials: Credentials,
    results: list[WorkerResult],
    ttl: int,
) -> Audit:
    audit = Audit()
    rows = database.execute(
        "SELECT id, rpc, user_id, lease_id, fencing_token, occurred_at, outcome_code"
        " FROM garmin_audit_event ORDER BY id"
    )
    grants: dict[str, list[tuple[int, str, int, datetime]]] = defaultdict(list)
    released_at: dict[str, int] = {}
    committed_grants: set[tuple[str, int]] = set()
    stored_reports: set[str] = set()
    reports_per_user: Counter[str] = Counter()
    for event_id, rpc, user, lease_id, fencing, occurred_at, outcome in rows:
        if outcome != "OK" or lease_id is None:
            continue
        if rpc in {"LeaseSession", "LeaseNextSession"}:
            grants[user].append((event_id, lease_id, fencing, occurred_at))
            committed_grants.add((lease_id, fencing))
        elif rpc == "ReleaseLease":
            released_at[lease_id] = event_id
        elif rpc == "ReportRefreshed":
            stored_reports.add(lease_id)
            reports_per_user[user] += 1
    audit.grants_committed = len(committed_grants)
    # The trail holds lease ids as the service stores them: their digests.
    for result in results:
        for lease_id, fencing in result.grants:
            if (lease_digest(lease_id), fencing) not in committed_grants:
                audit.lost(f"grant {fencing} answered but not committed")
        for lease_id in result.released:
            if lease_digest(lease_id) not in released_at:
                audit.lost("a release answered OK but not committed")
        for _user, lease_id, _digest, outcome, _at in result.reports:
            if outcome == "OK" and lease_digest(lease_id) not in stored_reports:
                audit.lost("a ReportRefreshed answered OK but not committed")
    check_grant_order(grants, released_at, timedelta(seconds=ttl), audit)
    check_stored_tokens(database, credentials, results, reports_per_user, audit)
    return audit


def check_grant_order(
    grants: dict[str, list[tuple[int, str, int, datetime]]],
    released_at: dict[str, int],
    lifetime: timedelta,
    audit: Audit,
) -> None:
    """Per user, in commit order (event ids): fencing tokens strictly grow, and each grant
    comes after the previous lease's release committed or after it expired (the grant's own
    time is what its statement compared the expiry with)."""
    for user, user_grants in grants.items():
        tokens = [fencing for _id, _lease, fencing, _at in user_grants]
        if tokens != sorted(set(tokens)):
            audit.violation(f"{user}: fencing tokens not strictly growing in commit order")
        for before, after in pairwise(user_grants):
            released = before[0] < released_at.get(before[1], after[0]) < after[0]
            if not released and after[3] < before[3] + lifetime:
                audit.violation(
                    f"{user}: grant {after[2]} while lease {before[2]} was neither released "
                    "nor expired"
                )


def check_stored_tokens(
    database: PostgresDatabase,
    credentials: Credentials,
    results: list[WorkerResult],
    reports_per_user: Counter[str],
    audit: Audit,
) -> None:
    box = SecretBox(credentials.keyring)
    by_user: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
    for result in results:
        for user, _lease, token_digest, outcome, ended in result.reports:
            by_user[user].append((token_digest, outcome, ended))
    for user, version, blob in database.execute(
        f"SELECT user_id, session_version, session_ciphertext FROM {TABLE}"
    ):
        if version != 1 + reports_per_user[user]:
            audit.violation(
                f"{user}: version {version} but {reports_per_user[user]} stored reports"
            )
        reports = sorted(by_user.get(user, []), key=lambda report: report[2])
        acked = [i for i, report in enumerate(reports) if report[1] == "OK"]
        if not acked:
            continue
        possible = {reports[acked[-1]][0]}
        possible |= {d for d, outcome, _ in reports[acked[-1] + 1 :] if outcome in UNKNOWN_OUTCOMES}
        stored = digest(box.open_tokens(user, version, bytes(blob)).oauth2.access_token)
        if stored not in possible:
            audit.lost(f"{user}: the stored tokens are not the last acknowledged report's")


# --- the run -----------------------------------------------------------------------------------


def start_workers(
    args: argparse.Namespace, targets: tuple[str, ...], credentials: Credentials
) -> list[tuple[multiprocessing.process.BaseProcess, Connection]]:
    context = multiprocessing.get_context("spawn")
    workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    for index in range(args.workers):
        parent_end, child_end = context.Pipe()
        spec = WorkerSpec(
            index=index,
            targets=targets,
            metadata=credentials.worker_metadata(),
            users=args.users,
            seconds=args.minutes * 60,
            ttl=args.ttl,
        )
        process = context.Process(target=_worker_main, args=(spec, child_end), daemon=True)
        process.start()
        child_end.close()
        workers.append((process, parent_end))
    return workers


def collect(
    workers: list[tuple[multiprocessing.process.BaseProcess, Connection]], seconds: float
) -> list[WorkerResult]:
    results = []
    deadline = time.monotonic() + seconds + 120
    for process, pipe in workers:
        remaining = max(1.0, deadline - time.monotonic())
        if not pipe.poll(remaining):
            raise RuntimeError("a worker did not report in time")
        kind, payload = pipe.recv()
        if kind != "result":
            raise RuntimeError(f"a worker failed: {payload}")
        results.append(payload)
        process.join(10)
    return results


def run(args: argparse.Namespace, report: Report) -> None:
    with Workdir("garmin-auth-soak-") as workdir:
        tree = ServiceTree(workdir, args.service_revision)
        # worker_full: the workers also ReportRefreshed (what stored tokens must match).
        credentials = Credentials.create(workdir, worker_role="worker_full")
        with (
            PostgresDatabase() as database,
            EmulatorProcess(workdir / "emulator.log") as emulator,
        ):
            replicas = []
            for index in range(2):
                env = service_environment(
                    database,
                    credentials,
                    upstream_url=emulator.url,
                    port=free_port(),
                    tree=tree,
                    extra={"GARMIN_AUTH_LEASE_DEFAULT_TTL": str(args.ttl)},
                )
                if index == 0:
                    database.migrate(env)
                    log(f"seeding {args.users} sessions")
                    seed_sessions(
                        database,
                        credentials.keyring,
                        range(args.users),
                        lambda _i: None,
                    )
                replicas.append(ServiceProcess(env, workdir / f"replica-{index}.log"))
            try:
                for replica in replicas:
                    replica.start()
                for replica in replicas:
                    replica.wait_serving()
                # Vacuumed as a production server's daemon would (benchmarks.autovacuum).
                with AutovacuumStandIn(database.conninfo) as autovacuum:
                    soak(args, report, database, credentials, replicas, tree)
                report.figure("stand_in_vacuums", autovacuum.work.vacuums, "vacuums")
            finally:
                for replica in replicas:
                    replica.stop()


def soak(
    args: argparse.Namespace,
    report: Report,
    database: PostgresDatabase,
    credentials: Credentials,
    replicas: list[ServiceProcess],
    tree: ServiceTree,
) -> None:
    pids = [replica.pid for replica in replicas]
    report.note(f"service: {tree.describe()}")
    report.note(
        f"{args.workers} worker processes, 2 replicas (pids {pids}), {args.users} users, "
        f"lease ttl {args.ttl} s, {args.minutes:g} min; the machine's other load is not ours"
    )
    checker = Checker(database.conninfo)
    checker.start()
    started = time.monotonic()
    log(f"soaking for {args.minutes:g} min with {args.workers} workers")
    workers = start_workers(args, tuple(replica.target for replica in replicas), credentials)
    try:
        results = collect(workers, args.minutes * 60)
    finally:
        for process, _pipe in workers:
            if process.is_alive():
                process.kill()
        checker.close()
    elapsed = time.monotonic() - started
    log("auditing")
    audit = final_audit(database, credentials, results, args.ttl)

    answers: Counter[str] = Counter()
    for result in results:
        answers.update(result.answers)
    operations = sum(answers.values())
    unexpected = sum(
        n for key, n in answers.items() if key.split(" ", 1)[1] not in {*EXPECTED, "OK_NOTHING_DUE"}
    )
    internal = sum(n for key, n in answers.items() if " INTERNAL" in key or " UNKNOWN" in key)
    restarts = sum(
        1
        for replica, pid in zip(replicas, pids, strict=True)
        if replica.pid != pid or health_status_of(replica) != 1
    )
    report.figure("soak_minutes", elapsed / 60, "min")
    report.figure("workers", args.workers, "processes")
    report.figure("replicas", len(replicas), "processes")
    report.figure("users", args.users, "sessions")
    report.figure("operations", operations, "rpcs")
    report.figure("operations_per_second", operations / elapsed, "rpc/s")
    for key in sorted(answers):
        rpc, _, outcome = key.partition(" ")
        report.figure(f"answers_{rpc}_{outcome.replace(' ', '_')}", answers[key], "rpcs")
    report.figure("grants_answered", sum(len(r.grants) for r in results), "leases")
    report.figure("grants_committed", audit.grants_committed, "leases")
    report.figure("leases_abandoned", sum(r.abandoned for r in results), "leases")
    report.figure(
        "reports_acknowledged",
        sum(1 for r in results for rep in r.reports if rep[3] == "OK"),
        "reports",
    )
    report.figure("releases_acknowledged", sum(len(r.released) for r in results), "releases")
    report.figure("invariant_checks", checker.reads, "table reads")
    report.figure("invariant_checks_unreachable", checker.unreachable, "table reads")
    report.at_most("invariant_violations", len(checker.violations) + len(audit.violations), 0)
    report.at_most("data_lost", audit.data_lost, 0)
    report.at_most("internal_errors", internal, 0)
    report.at_most("unexpected_answers", unexpected, 0)
    report.at_most("replica_restarts", restarts, 0)


def health_status_of(replica: ServiceProcess) -> int | None:
    with grpc.insecure_channel(replica.target) as channel:
        return health_status(channel, timeout=5)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak")
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument("--workers", type=int, default=8, help="worker processes (default 8)")
    parser.add_argument("--users", type=int, default=200, help="sessions (default 200)")
    parser.add_argument("--ttl", type=int, default=10, help="lease ttl in seconds (default 10)")
    ServiceTree.add_argument(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = Report()
    run(args, report)
    report.log_done()
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
