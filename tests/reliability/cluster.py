"""A private PostgreSQL cluster for one test, so the test may stop and start it without
touching the machine's shared server (where every other test's database lives).

It runs from the PostgreSQL 15 binaries (`/usr/lib/postgresql/15/bin`, or
GARMIN_AUTH_TEST_PG_BINDIR) on a free port of 127.0.0.1, with its data directory and socket in
a temporary directory, trust authentication and fsync off (a test cluster: the operating
system still holds every write, so a stop in `immediate` mode loses nothing acknowledged;
synchronous_commit stays on for exactly that reason). initdb refuses to run as root: as root
every command runs as the `postgres` user, which owns the temporary directory.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.reliability import free_port

BINDIR_ENV = "GARMIN_AUTH_TEST_PG_BINDIR"
DEFAULT_BINDIRS = (Path("/usr/lib/postgresql/15/bin"),)
COMMAND_TIMEOUT_SECONDS = 60


class ClusterError(RuntimeError):
    """A pg_ctl/initdb command failed."""


def find_bindir() -> Path:
    configured = os.environ.get(BINDIR_ENV)
    candidates = [Path(configured)] if configured else list(DEFAULT_BINDIRS)
    for candidate in candidates:
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    raise ClusterError(
        f"PostgreSQL 15 server binaries not found in {[str(c) for c in candidates]}; "
        f"install postgresql-15 or set {BINDIR_ENV}"
    )


class PrivateCluster:
    """initdb, start, stop (fast or immediate), destroy. Not shared with anything."""

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="garmin-auth-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> str:
        command = [str(self.bindir / program), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
            check=False,
            cwd=self.root,
        )
        if result.returncode != 0:
            raise ClusterError(
                f"{program} {' '.join(args[:2])} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-1500:]}\n{self.log_tail()}"
            )
        return result.stdout

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self) -> None:
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.root}",
                "-c fsync=off",
                "-c full_page_writes=off",
                "-c max_connections=100",
            ]
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m fast` (sessions ended, transactions rolled back, clean shutdown) or
        `-m immediate` (every process killed at once, crash recovery at the next start)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    @property
    def running(self) -> bool:
        try:
            self._run("pg_ctl", "-D", str(self.data), "status")
        except ClusterError:
            return False
        return True

    def destroy(self) -> None:
        """Stop the cluster if it runs and delete every file of it."""
        try:
            if self.data.exists() and self.running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def migrated_cluster() -> Iterator[PrivateCluster]:
    """A private cluster of its own, started and migrated to head; destroyed after."""
    from auth_service.storage.schema import upgrade_to_head  # noqa: PLC0415 - tests only

    cluster = PrivateCluster()
    try:
        cluster.start()
        upgrade_to_head(cluster.url)
        yield cluster
    finally:
        cluster.destroy()
