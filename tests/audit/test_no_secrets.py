"""No secret ever reaches the audit trail: after every audited flow, the table is scanned for
every secret the Garmin emulator knew or issued, the caller tokens, the consumer secret, the
MFA challenge ids and codes and the lease ids handed out."""

from __future__ import annotations

from sqlalchemy import text

from auth_service.storage.database import create_engine_for
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import EXCHANGE_PATH, GarminEmulator
from tests.audit import PASSWORD, connect, garmin_tokens, import_tokens, lease
from tests.fixtures.emulators import every_secret_issued
from tests.fixtures.servers import CONSUMER_SECRET, ROLE_TOKENS, Replica, expect_failure

# Every column that holds text; the others are ids, timestamps and fencing tokens.
TEXT_COLUMNS = ("caller", "rpc", "user_id", "outcome_code", "outcome_reason", "lease_id")
# Shorter values (a 4-digit code) could match inside an unrelated word by accident.
MIN_SECRET_LENGTH = 6


def _stored_text(database_url: str) -> list[str]:
    engine = create_engine_for(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(f"SELECT {', '.join(TEXT_COLUMNS)} FROM garmin_audit_event")  # noqa: S608
            ).all()
    finally:
        engine.dispose()
    return [str(value) for row in rows for value in row if value is not None]


def _every_audited_flow(service: Replica, garmin: GarminEmulator) -> set[str]:
    """Run each audited RPC, successes and recorded refusals; returns extra secrets seen."""
    seen: set[str] = set()
    # Login without and with MFA; a wrong code, then the right one.
    garmin.add_user("ann@example.com", PASSWORD)
    service.call(
        "Login", pb.LoginRequest(user_id="ann", email="ann@example.com", password=PASSWORD)
    )
    garmin.add_user("bob@example.com", PASSWORD, mfa=True, mfa_code="246813")
    challenge = service.call(
        "Login", pb.LoginRequest(user_id="bob", email="bob@example.com", password=PASSWORD)
    ).mfa_challenge_id
    seen |= {challenge, "246813", "135799"}
    expect_failure(
        lambda: service.call(
            "SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="135799")
        )
    )
    service.call("SubmitMfa", pb.SubmitMfaRequest(mfa_challenge_id=challenge, code="246813"))
    # Import, validate with a refresh, lease with a central refresh.
    connect(service, garmin, "cal", expired=True)
    service.call("GetStatus", pb.GetStatusRequest(user_id="cal", validate=True))
    connect(service, garmin, "dee", expired=True)
    granted = lease(service, "dee", role="worker_full")
    grant = granted.lease
    seen.add(grant.lease_id)
    service.call("RenewLease", pb.RenewLeaseRequest(lease_id=grant.lease_id), role="worker_full")
    service.call(
        "ReportRefreshed",
        pb.ReportRefreshedRequest(lease_id=grant.lease_id, session=granted.session),
        role="worker_full",
    )
    service.call(
        "ReleaseLease", pb.ReleaseLeaseRequest(lease_id=grant.lease_id), role="worker_full"
    )
    # Reports under the dead lease (recorded as LEASE_LOST).
    expect_failure(
        lambda: service.call(
            "ReportRefreshed",
            pb.ReportRefreshedRequest(lease_id=grant.lease_id, session=granted.session),
            role="worker_full",
        )
    )
    nxt = service.call("LeaseNextSession", pb.LeaseNextSessionRequest(holder="w"), role="worker")
    seen.add(nxt.lease.lease_id)
    service.call(
        "ReportInvalidated",
        pb.ReportInvalidatedRequest(lease_id=nxt.lease.lease_id, reason="401 from the API"),
        role="worker",
    )
    # A central refresh Garmin refuses (429) releases the lease.
    connect(service, garmin, "eli", expired=True)
    garmin.fail_next(EXCHANGE_PATH, 429)
    expect_failure(lambda: lease(service, "eli"))
    import_tokens(service, "fox", garmin_tokens(service, garmin, "fox@example.com"))
    service.call("DeleteSession", pb.DeleteSessionRequest(user_id="fox"))
    return seen


def test_no_secret_in_any_event(
    service: Replica, garmin: GarminEmulator, database_url: str
) -> None:
    extra = _every_audited_flow(service, garmin)
    stored = _stored_text(database_url)
    rpcs = {value for value in stored if value[0].isupper() and value.isalpha()}
    assert {"Login", "SubmitMfa", "ImportSession", "GetStatus", "LeaseSession"} <= rpcs
    assert {"RenewLease", "ReportRefreshed", "ReleaseLease", "LeaseNextSession"} <= rpcs
    assert {"ReportInvalidated", "DeleteSession"} <= rpcs

    secrets = every_secret_issued() | extra | set(ROLE_TOKENS.values()) | {CONSUMER_SECRET}
    secrets = {secret for secret in secrets if len(secret) >= MIN_SECRET_LENGTH}
    assert PASSWORD in secrets
    # The report names the kind of value, never the secret itself.
    leaks = [
        f"a {len(secret)}-character secret"
        for value in stored
        for secret in secrets
        if secret in value
    ]
    assert not leaks
