"""What the log redaction filter costs a line: garmin_client.logging_setup.redact, which
searches a line only with the patterns whose needle it holds, against every pattern on every
line (how it ran before 7 Dec), measured side by side in one run.

    .venv/bin/python -m benchmarks.redaction_cost [--lines 100000] [--rounds 2]

Every log line and every string field of the access log goes through redact(); the sample
lines are the service's usual shapes (an access-log line, a lease line, a Garmin failure,
a short one), none of them holding a secret, so the figure is the filter's own cost.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

from benchmarks.harness import Report, ratio, run_reported
from garmin_client import logging_setup

LINES = (
    "rpc LeaseSession ok",
    "lease granted to worker-7 for user alice-0001 until 2026-12-07T10:22:01Z (fencing 42)",
    '{"rpc": "LeaseNextSession", "caller": "sync-worker", "user_id": "user-000123", '
    '"outcome": "OK", "latency_ms": 3.2}',
    "garmin refresh failed: Unavailable (HTTP 503 on /di-oauth2-service/oauth/token)",
)


def every_pattern(text: str) -> str:
    """redact() without the needles: every pattern searched on every line."""
    if len(text) < logging_setup._SHORT and logging_setup._HINTS.search(text) is None:
        return text
    for pattern, _needles in logging_setup._SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + logging_setup.REDACTED, text)
    return text


def _us_per_line(redact: Callable[[str], str], lines: int) -> float:
    """Microseconds of this thread's CPU per line, over the sample lines in turn."""
    started = time.thread_time()
    for number in range(lines):
        redact(LINES[number % len(LINES)])
    return (time.thread_time() - started) / lines * 1e6


def run(args: argparse.Namespace, report: Report) -> None:
    for line in LINES:  # both give the same line, or the comparison means nothing
        assert logging_setup.redact(line) == every_pattern(line), line
    for round_number in range(1, args.rounds + 1):
        gated = _us_per_line(logging_setup.redact, args.lines)
        ungated = _us_per_line(every_pattern, args.lines)
        report.figure(f"redact_us_per_line_round{round_number}", gated, "us")
        report.figure(f"redact_every_pattern_us_per_line_round{round_number}", ungated, "us")
        report.figure(
            f"redact_vs_every_pattern_round{round_number}", ratio(gated, ungated), "ratio"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.redaction_cost")
    parser.add_argument("--lines", type=int, default=100_000, help="lines per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="side-by-side rounds")
    return run_reported(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
