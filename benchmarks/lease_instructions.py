"""Instructions per lease RPC through the use cases, counted by callgrind: a figure that does
not move with what else the machine runs (the wall-clock benchmarks on a shared 2-core box
do, by a factor of two).

    .venv/bin/python -m benchmarks.lease_instructions [--pairs 200] [--service-revision REV]

Seeds 200 sessions in a fresh PostgreSQL database, then runs
benchmarks/lease_instructions_child.py (LeaseSession + ReleaseLease through LeaseService, one
thread: the storage layer, the domain and psycopg, without gRPC, the interceptor or the log
line) under `valgrind --tool=callgrind` twice, with no measured pair and with `--pairs`; the
difference divided by the RPCs is the figure. With `--service-revision REV` the same runs use
that revision's service code too, and the ratio is printed. Counts the Python process only;
PostgreSQL's work is not in it. Needs valgrind (on every machine of this project's kind).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.harness import (
    Credentials,
    PostgresDatabase,
    Report,
    ServiceTree,
    Workdir,
    clean_environment,
    log,
    ratio,
    seed_sessions,
    service_environment,
)

USERS = 200
CHILD = Path(__file__).with_name("lease_instructions_child.py")
_COLLECTED = re.compile(r"Collected : (\d+)")


def instructions(tree: ServiceTree, pairs: int, database: PostgresDatabase, key: str) -> int:
    """Instructions the child spends on `pairs` pairs, its start-up and warm-up subtracted."""
    counts = []
    for measured in (0, pairs):
        env = {**clean_environment(), **tree.environment()}
        result = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                sys.executable,
                str(CHILD),
                str(measured),
                database.url,
                key,
                str(USERS),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        found = _COLLECTED.search(result.stderr)
        if result.returncode != 0 or found is None:
            raise RuntimeError(f"callgrind run failed: {result.stderr.strip()[-2000:]}")
        counts.append(int(found.group(1)))
    return counts[1] - counts[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200)
    ServiceTree.add_argument(parser)
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed", file=sys.stderr)
        return 2
    report = Report()
    rpcs = 2 * args.pairs
    with Workdir() as workdir, PostgresDatabase() as database:
        credentials = Credentials.create(workdir)
        # Nothing is served: the environment is only what `migrate` reads.
        database.migrate(
            service_environment(database, credentials, upstream_url="http://127.0.0.1:9", port=9)
        )
        seed_sessions(database, credentials.keyring, range(USERS), lambda _index: None)
        trees = [ServiceTree(workdir)]
        if args.service_revision:
            trees.append(ServiceTree(workdir, args.service_revision))
        per_rpc = []
        for tree in trees:
            log(f"callgrind: {args.pairs} pairs, service code: {tree.describe()}")
            count = instructions(tree, args.pairs, database, credentials.keyring_value)
            per_rpc.append(count / rpcs)
            name = "lease_instructions_per_rpc" + ("" if tree.revision is None else "_revision")
            report.figure(name, count / rpcs / 1e6, "M instructions")
        if args.service_revision:
            working, revision = per_rpc
            report.figure("lease_instructions_vs_revision", ratio(working, revision), "ratio")
    report.log_done()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
