"""Python writes warnings and a thread's uncaught exception to stderr itself, past the JSON
log and its redaction; an exception's message may hold what a library was given (a URL with
its password, a token). After configure_logging both are JSON log lines, masked. Before, the
secrets below reached stderr whole, in a raw traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "Tr0ub4dorHorse99"
TOKEN = "refresh-token-value-never-printed"

PROGRAM = textwrap.dedent(
    f"""
    import threading, warnings
    from garmin_client.logging_setup import configure_logging

    configure_logging("INFO")

    def fail():
        raise RuntimeError("could not reach postgresql://garmin:{PASSWORD}@db/garmin")

    thread = threading.Thread(target=fail, name="refresher-1")
    thread.start()
    thread.join()
    warnings.warn("retrying with refresh_token={TOKEN}", RuntimeWarning, stacklevel=1)
    threading.Thread(target=lambda: exec("raise SystemExit(3)")).start()
    """
)


def test_uncaught_thread_exceptions_and_warnings_are_masked_log_lines() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "protos")])}
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stderr
    assert TOKEN not in result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
    uncaught = [line for line in lines if line["logger"] == "uncaught"]
    assert len(uncaught) == 1  # the SystemExit of a thread says nothing, as Python's hook
    assert "refresher-1" in uncaught[0]["message"]
    assert "RuntimeError" in uncaught[0]["exception"]
    assert any(line["logger"] == "py.warnings" for line in lines)
