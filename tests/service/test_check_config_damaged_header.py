"""check-config's "stored secrets" line and a session blob damaged in its header.

check-config is the shipped Deployment's init container (deploy/kubernetes/base): a FAIL holds
every new replica back. README (check-config): a stored secret that does not open "beside ones
that do is an altered row, named in a WARNING on the ok line: only that user answers DATA_LOSS
SECRET_UNREADABLE, until logged in again" (tests/service/test_check_config_altered_row.py: a
blob copied from another row).

Before, every blob not under a configured key id counted as one "under a key id not in
GARMIN_AUTH_ENCRYPTION_KEYS ... put the old key back", also bytes that are no blob at all (an
unknown format byte, a key id length or characters no key id has, too short for a nonce and a
tag): check-config failed, though no old key exists to put back, and held every new replica
in its init container while the service served every other user. Now only a blob whose header
parses as one the service writes counts as under an unknown key id (and still fails the line);
any other is an altered row, named in the WARNING on the `ok` line.
"""

from __future__ import annotations

import pytest

from auth_service.checks import run_checks
from tests.fixtures.database import overwrite_session_row
from tests.service.test_check_config import K1, K2, by_name, env, failed, store_session

__all__ = ["env"]

# The bytes after a header that a real blob carries at least: a nonce and a tag.
SEALED_TAIL = bytes(12 + 16)

# Stored session bytes that are not sealed blobs; none of them could be opened by any key.
DAMAGED = {
    # The damaged blob the suite's grant test stores (test_ciphertext_rollback); its "key id
    # length" is 110, more than any key id has.
    "no-blob-at-all": b"\x02not-a-sealed-session",
    "empty": b"",
    "unknown-format": b"\x07\x02k0" + SEALED_TAIL,
    "truncated-after-the-key-id": b"\x02\x02k0" + bytes(5),
    "key-id-with-a-line-break": b"\x02\x02k\n" + SEALED_TAIL,
    "key-id-not-ascii": b"\x02\x02k\xe9" + SEALED_TAIL,
    "empty-key-id": b"\x02\x00" + SEALED_TAIL,
}


@pytest.mark.parametrize("blob", DAMAGED.values(), ids=DAMAGED.keys())
def test_one_session_with_a_damaged_header_is_named_without_failing_check_config(
    env: dict[str, str], database_url: str, blob: bytes
) -> None:
    for user_id in ("aaron", "bob", "carol"):
        store_session(database_url, user_id, K1)
    overwrite_session_row(database_url, "aaron", session_ciphertext=blob)

    results = run_checks(env)

    problems = failed(results)
    assert "stored secrets" not in problems, (
        "check-config fails (and with it every new replica's init container) over one "
        f"damaged row that no key could ever open: {problems.get('stored secrets')}"
    )
    line = by_name(results)["stored secrets"].detail
    expected = "sessions: k1=2 (each key id opened a sample); WARNING: 1 session"
    assert line.startswith(expected), line
    assert "'aaron'" in line
    assert "'bob'" not in line
    assert "'carol'" not in line


def test_the_only_stored_session_damaged_is_named_too(
    env: dict[str, str], database_url: str
) -> None:
    store_session(database_url, "aaron", K1)
    overwrite_session_row(database_url, "aaron", session_ciphertext=DAMAGED["no-blob-at-all"])

    results = run_checks(env)

    assert "stored secrets" not in failed(results), failed(results)["stored secrets"]
    line = by_name(results)["stored secrets"].detail
    assert line.startswith("sessions: none under a key id; WARNING: 1 session"), line
    assert "'aaron'" in line


def test_a_session_under_a_dropped_key_still_fails_beside_a_damaged_one(
    env: dict[str, str], database_url: str
) -> None:
    """The damaged row is not counted as under the missing key: the line counts the one
    session whose key is really still needed, and names its key id."""
    store_session(database_url, "aaron", K1)
    store_session(database_url, "bob", K2)
    store_session(database_url, "carol", K2)
    overwrite_session_row(database_url, "aaron", session_ciphertext=DAMAGED["unknown-format"])
    store_session(database_url, "dora", K1)
    env["GARMIN_AUTH_ENCRYPTION_KEYS"] = K2  # k1 dropped before rotate-keys finished

    problem = failed(run_checks(env))["stored secrets"]

    assert problem.startswith(
        "1 session(s) under a key id not in GARMIN_AUTH_ENCRYPTION_KEYS ('k1'=1; found k2=2 "
        "under configured ids); put the old key back"
    ), problem
