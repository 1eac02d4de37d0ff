"""Refusals are not in the change log, and changes are, whatever the call answered (README
"Change stream and webhooks"). Before: a Login refused by Garmin's 429 left a NOT_CONNECTED
'change' (the cooldown's OK-coded event), and releasing a grant that could not be handed out
left none, so the stream kept showing the lease.
"""

from __future__ import annotations

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import EXCHANGE_PATH, LOGIN_PATH, GarminEmulator
from tests.audit import PASSWORD, connect, lease
from tests.audit.trail_rows import entries, events
from tests.fixtures.servers import Replica, expect_failure


def test_login_refused_by_garmins_429_appends_no_change(
    service: Replica, garmin: GarminEmulator, database_url: str
) -> None:
    """A Login answered GARMIN_RATE_LIMITED (Garmin's 429) changed no session: it starts the
    account's cooldown (audited OK/GARMIN_COOLDOWN_STARTED), yet the change log gets a
    "Login" entry for a user the service has never known (status NOT_CONNECTED)."""
    garmin.add_user("newbie@example.com", PASSWORD)
    garmin.fail_next(LOGIN_PATH, 429, retry_after=30)
    refused = expect_failure(
        lambda: service.call(
            "Login",
            pb.LoginRequest(user_id="newbie", email="newbie@example.com", password=PASSWORD),
        )
    )
    assert refused.reason == "GARMIN_RATE_LIMITED"
    assert ("Login", "newbie", "OK", "GARMIN_COOLDOWN_STARTED") in events(database_url, "newbie")
    assert [(e.rpc, e.state) for e in entries(database_url, "newbie")] == []


def test_release_of_an_unusable_grant_appends_its_change(
    service: Replica, garmin: GarminEmulator, database_url: str
) -> None:
    """A grant whose central refresh met Garmin's 429 with an expired token is released
    (audited RESOURCE_EXHAUSTED/GARMIN_RATE_LIMITED, README "Audit trail"), but the release
    appends no change-log entry: the log's last status of the user still shows the lease."""
    connect(service, garmin, "quin", expired=True)
    garmin.fail_next(EXCHANGE_PATH, 429, retry_after=30)
    refused = expect_failure(lambda: lease(service, "quin"))
    assert refused.reason == "GARMIN_RATE_LIMITED"
    status = service.call("GetStatus", pb.GetStatusRequest(user_id="quin")).status
    assert not status.HasField("lease")  # released
    log = entries(database_url, "quin")
    seen = [(e.rpc, e.state, e.status.get("lease")) for e in log]
    assert log[-1].status.get("lease") is None, seen
