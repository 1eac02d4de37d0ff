"""After SIGTERM, `serve` exits once the grace period is over, even while a handler still
runs a Garmin call that issues no session (README "Commands": SIGTERM "lets in-flight calls
finish within the grace period, waits for any session Garmin is still issuing to be stored,
then exits"). Before, the interpreter waited at exit for the RPC pool's threads: a Garmin
call of 8 s held the exit 8 s with a 1 s grace, past the pod's termination grace in
production. (A call that issues a session is waited for:
tests/refresh/test_stop_waits_for_issued_sessions.py.)"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator.endpoints import PROFILE_PATH
from tests.fixtures.di_upstream import di_tokens
from tests.fixtures.servers import ROLE_TOKENS
from tests.leases import seed_active
from tests.refresh.test_stop_waits_for_issued_sessions import (
    GRACE,
    stack,
    stop_while_garmin_answers,
)


def test_a_call_longer_than_the_grace_does_not_hold_the_exit(tmp_path: Path) -> None:
    with stack(tmp_path) as s:
        s.garmin.add_user("slow@example.com", "pw")
        tokens = di_tokens(s.garmin.issue_di_tokens("slow@example.com"))
        seed_active(s.db, s.box, "slow", tokens, datetime.now(UTC))
        # Garmin's API answers the validation after 8 s (within the 10 s timeout).
        stopped = stop_while_garmin_answers(
            s,
            lambda stub: stub.GetStatus.future(
                pb.GetStatusRequest(user_id="slow", validate=True),
                metadata=(("authorization", f"Bearer {ROLE_TOKENS['admin']}"),),
                timeout=30,
            ),
            PROFILE_PATH,
        )
    assert stopped.code == 0, stopped.stderr
    # The grace (1 s) and a few seconds to stop the background work; not the call's 8 s.
    took = stopped.took
    assert took < GRACE + 3.0, f"serve exited {took:.1f} s after SIGTERM (grace {GRACE:g} s)"
