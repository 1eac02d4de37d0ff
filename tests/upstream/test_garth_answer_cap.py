"""garth's calls read at most MAX_AUTH_ANSWER_BYTES (1 MiB, decoded) of an answer, as the DI
provider's do (tests/upstream/test_auth_answer_cap.py): a sign-in, the OAuth exchange and
GetStatus(validate)'s profile, each answered with about 128 KiB of gzip that inflates to
128 MiB, fail as Garmin unavailable (try later) within a few MiB.

Before, garth's transport (auth_service.upstream.garth.isolation) had no cap: requests read
and decompressed each answer whole, and garth decoded it to text again; one such answer took
hundreds of MiB of a replica, and a few at once got it OOM-killed, with every rotation it held
unstored."""

from __future__ import annotations

import pytest

from auth_service.domain.models import GarminTokens
from auth_service.upstream.garth.provider import GarthUpstream
from garmin_emulator import EXCHANGE_PATH, LOGIN_PATH, PROFILE_PATH, EmulatedUser, GarminEmulator

from .conftest import PASSWORD
from .test_auth_answer_cap import BOMB, refused_within_the_cap

pytestmark = pytest.mark.timeout(120)


def test_a_sign_in_answer_is_read_within_the_cap(
    upstream: GarthUpstream, emulator: GarminEmulator, user: EmulatedUser
) -> None:
    emulator.fail_next(LOGIN_PATH, 200, body=BOMB, gzip=True, content_type="application/json")

    refused_within_the_cap(lambda: upstream.login(user.email, PASSWORD), "sign-in")


def test_an_exchange_answer_is_read_within_the_cap(
    upstream: GarthUpstream, emulator: GarminEmulator, tokens: GarminTokens
) -> None:
    emulator.fail_next(EXCHANGE_PATH, 200, body=BOMB, gzip=True, content_type="application/json")

    refused_within_the_cap(lambda: upstream.refresh(tokens), "exchange")


def test_a_profile_answer_is_read_within_the_cap(
    upstream: GarthUpstream, emulator: GarminEmulator, tokens: GarminTokens
) -> None:
    emulator.fail_next(PROFILE_PATH, 200, body=BOMB, gzip=True, content_type="application/json")

    refused_within_the_cap(lambda: upstream.validate(tokens, allow_refresh=False), "profile")
