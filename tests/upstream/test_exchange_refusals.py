"""A 401 on garth's OAuth1 -> OAuth2 exchange ends the session only when it cannot be Garmin
refusing our consumer or clock (auth_service.upstream.garth.exchange_refusals).

Garmin answers 401 to a dead OAuth1 token and to a request signed with a consumer it refuses
(a typo in GARMIN_AUTH_OAUTH_CONSUMER_SECRET, a rotated key) or stamped by a clock far off
alike. Before, every such 401 was GarminSessionRejected: with a wrong consumer secret or a
replica's clock off, every garth session ended at its next refresh (and garth sessions cannot
be signed in again). Now a 401 is the session's end only after this process saw Garmin accept
the same consumer, and only for the first session refused since; otherwise Garmin is
unavailable (try later) and the operator is told to check the consumer and the clock.

Real garth adapter, emulator over HTTP.
"""

from __future__ import annotations

import pytest

from auth_service.domain.errors import GarminSessionRejected, GarminUnavailable
from auth_service.domain.models import GarminTokens
from auth_service.upstream.garth.exchange_refusals import forget_all
from auth_service.upstream.garth.provider import GarthUpstream
from garmin_emulator import EmulatedUser, GarminEmulator
from tests.fixtures.logs import RecordingHandler

from .conftest import CONSUMER_SECRET, PASSWORD, locally_expired, login_tokens, make_settings

pytestmark = pytest.mark.timeout(60)

CONSUMER_SETTINGS = "GARMIN_AUTH_OAUTH_CONSUMER_KEY and GARMIN_AUTH_OAUTH_CONSUMER_SECRET"


def _errors(handler: RecordingHandler) -> list[str]:
    return [text for name, text in handler.texts if name.endswith("exchange_refusals")]


def test_a_wrong_consumer_secret_ends_no_session_and_says_what_to_check(
    emulator: GarminEmulator,
    upstream: GarthUpstream,
    tokens: GarminTokens,
    no_secret_in_logs: RecordingHandler,
) -> None:
    # The service (re)started with a typo in its consumer secret; Garmin accepted the right
    # one a moment ago (the login), which proves nothing of this one.
    misconfigured = GarthUpstream(make_settings(emulator, consumer_secret="typo-" + "x" * 8))

    for _ in range(3):
        # Before: GarminSessionRejected, the session ended.
        with pytest.raises(GarminUnavailable, match="HTTP 401"):
            misconfigured.refresh(tokens)
        with pytest.raises(GarminUnavailable):
            misconfigured.validate(locally_expired(tokens), allow_refresh=True)

    assert emulator.signature_failures == 6
    errors = _errors(no_secret_in_logs)
    assert len(errors) == 1  # once a minute, not once a refresh
    assert CONSUMER_SETTINGS in errors[0]
    assert "clock" in errors[0]
    assert "accepted no exchange with this OAuth consumer since the service started" in errors[0]
    assert upstream.refresh(tokens).oauth1 == tokens.oauth1  # the session was fine


def test_a_clock_far_off_at_start_ends_no_session(
    emulator: GarminEmulator, upstream: GarthUpstream, tokens: GarminTokens
) -> None:
    forget_all()  # the service restarted since the session was stored
    emulator.oauth_clock_skew_seconds = 3600.0  # this replica's clock is an hour behind

    for _ in range(2):
        with pytest.raises(GarminUnavailable):
            upstream.refresh(tokens)

    emulator.oauth_clock_skew_seconds = 0.0  # NTP put it right
    assert upstream.refresh(tokens).oauth1 == tokens.oauth1


def test_after_a_restart_a_dead_session_ends_once_another_exchange_succeeded(
    emulator: GarminEmulator,
    upstream: GarthUpstream,
    user: EmulatedUser,
    other_user: EmulatedUser,
) -> None:
    dead = login_tokens(upstream, user)
    alive = login_tokens(upstream, other_user)
    emulator.revoke_tokens(user.email)
    forget_all()  # the service restarted since

    # No exchange accepted since the start: the 401 may be our consumer's.
    with pytest.raises(GarminUnavailable):
        upstream.refresh(dead)
    upstream.refresh(alive)  # Garmin accepts our consumer and clock

    with pytest.raises(GarminSessionRejected):
        upstream.refresh(dead)


def test_a_second_session_refused_in_a_row_waits_for_an_accepted_exchange(
    emulator: GarminEmulator, upstream: GarthUpstream, no_secret_in_logs: RecordingHandler
) -> None:
    users = [emulator.add_user(f"u{n}@example.com", PASSWORD) for n in range(3)]
    first, second, alive = (login_tokens(upstream, user) for user in users)
    emulator.revoke_tokens(users[0].email)
    emulator.revoke_tokens(users[1].email)

    with pytest.raises(GarminSessionRejected):
        upstream.refresh(first)
    # Two sessions in a row may as well be our consumer or clock failing: try later.
    with pytest.raises(GarminUnavailable):
        upstream.refresh(second)
    assert (
        "2 sessions were refused since the last exchange it accepted"
        in _errors(no_secret_in_logs)[0]
    )
    upstream.refresh(alive)

    with pytest.raises(GarminSessionRejected):
        upstream.refresh(second)


def test_a_clock_going_off_while_running_ends_at_most_one_session(
    emulator: GarminEmulator, upstream: GarthUpstream
) -> None:
    users = [emulator.add_user(f"c{n}@example.com", PASSWORD) for n in range(4)]
    sessions = [login_tokens(upstream, user) for user in users]
    emulator.oauth_clock_skew_seconds = -3600.0

    outcomes = []
    for tokens in sessions:
        try:
            upstream.refresh(tokens)
            outcomes.append("refreshed")
        except GarminSessionRejected:
            outcomes.append("rejected")
        except GarminUnavailable:
            outcomes.append("unavailable")

    # The first refusal after an accepted exchange cannot be told from a dead session: the
    # bound of the rule (exchange_refusals), not a wish.
    assert outcomes == ["rejected", "unavailable", "unavailable", "unavailable"]


def test_the_consumer_secret_never_reaches_the_error_line(
    emulator: GarminEmulator, tokens: GarminTokens, no_secret_in_logs: RecordingHandler
) -> None:
    misconfigured = GarthUpstream(make_settings(emulator, consumer_key="rotated-key"))

    with pytest.raises(GarminUnavailable):
        misconfigured.refresh(tokens)

    errors = _errors(no_secret_in_logs)
    assert len(errors) == 1
    assert CONSUMER_SECRET not in errors[0]
    assert "rotated-key" not in errors[0]
