"""The emulator's control paths (``/__emulator/...``), spoken to over HTTP as a benchmark
that runs the emulator in its own process does: DI token pairs issued in bulk, and what the
DI token endpoint saw read back. Control calls have no latency, no faults and no counts."""

from __future__ import annotations

import json
import time

import pytest
import requests

from auth_service.upstream.di.garminconnect import tokens_from_garminconnect
from garmin_emulator import (
    DI_RECORDS_PATH,
    DI_TOKEN_PATH,
    DI_TOKENS_PATH,
    KNOWN_DI_CLIENT_IDS,
    REQUEST_COUNTS_PATH,
    GarminEmulator,
)

from .conftest import PASSWORD
from .di_http import refresh

pytestmark = pytest.mark.timeout(30)

TIMEOUT = 5
EMAILS = ["first@example.com", "Second@example.com"]


@pytest.fixture
def accounts(emulator: GarminEmulator) -> list[str]:
    for email in EMAILS:
        emulator.add_user(email, PASSWORD)
    return EMAILS


def issue(emulator: GarminEmulator, body: object) -> requests.Response:
    return requests.post(f"{emulator.url}{DI_TOKENS_PATH}", json=body, timeout=TIMEOUT)


def records(emulator: GarminEmulator) -> dict[str, dict[str, int]]:
    answer = requests.get(f"{emulator.url}{DI_RECORDS_PATH}", timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    body: dict[str, dict[str, int]] = answer.json()
    return body


def test_bulk_pairs_are_live_garminconnect_files_and_records_count_their_rotations(
    emulator: GarminEmulator, accounts: list[str]
) -> None:
    client_id = KNOWN_DI_CLIENT_IDS[1]

    answer = issue(emulator, {"emails": accounts, "client_id": client_id})

    assert answer.status_code == 200, answer.text
    files = answer.json()["tokens"]
    assert [f["di_client_id"] for f in files] == [client_id, client_id]
    assert len({f["di_refresh_token"] for f in files}) == 2
    # The service's own import parser accepts each as a garmin_tokens.json.
    parsed = [tokens_from_garminconnect(json.dumps(f)) for f in files]
    assert all(tokens.di_client_id == client_id for tokens in parsed)
    assert records(emulator)["di_refreshes"] == {}  # issuing is not a refresh

    first = files[0]["di_refresh_token"]
    assert refresh(emulator, first, client_id=client_id).status_code == 200
    assert refresh(emulator, first, client_id=client_id).status_code == 400  # rotated out

    seen = records(emulator)
    assert seen["di_refreshes"] == {"first@example.com": 1}
    assert seen["refresh_token_reuses"] == {"first@example.com": 1}
    assert seen["ticket_exchanges"] == {}
    assert seen["token_outcomes"] == {"issued": 1, "invalid_grant": 1}
    assert seen["peak_in_flight"] == {DI_TOKEN_PATH: 1}
    assert emulator.di_refresh_count("second@example.com") == 0


def test_control_calls_skip_latency_and_faults_and_are_not_counted(
    emulator: GarminEmulator, accounts: list[str]
) -> None:
    emulator.latency_seconds = 1.0
    emulator.fail_next("/", 503, count=5)

    started = time.perf_counter()
    assert issue(emulator, {"emails": accounts}).status_code == 200
    assert records(emulator)["token_outcomes"] == {}
    counts = requests.get(f"{emulator.url}{REQUEST_COUNTS_PATH}", timeout=TIMEOUT)
    elapsed = time.perf_counter() - started

    assert counts.json() == {}
    assert elapsed < emulator.latency_seconds
    assert emulator.request_count() == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"emails": ["first@example.com", "nobody@example.com"]}, "1 unknown account(s)"),
        ({"emails": "first@example.com"}, "emails must be a list"),
        ({"emails": [1]}, "emails must be a list"),
        ({"emails": EMAILS, "client_id": 7}, "client_id must be a string"),
        (["first@example.com"], "must be a JSON object"),
    ],
)
def test_a_malformed_bulk_request_issues_nothing(
    emulator: GarminEmulator, accounts: list[str], body: object, message: str
) -> None:
    answer = issue(emulator, body)

    assert answer.status_code == 400
    assert message in answer.json()["message"]
    assert emulator.live_refresh_tokens(accounts[0]) == []


def test_an_unknown_control_path_is_404(emulator: GarminEmulator) -> None:
    answer = requests.get(f"{emulator.url}/__emulator/nothing", timeout=TIMEOUT)

    assert answer.status_code == 404
    assert emulator.request_count() == 0
