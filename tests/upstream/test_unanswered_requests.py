"""Which failures may have left a request with Garmin (`unanswered`): a timeout or a broken
connection after it was sent, but not a connection that was never made. SubmitMfa counts a
code whose answer was lost and keeps its claim (tests/service/test_mfa_codes_without_answer.py);
one that never left is released and counts nothing."""

from __future__ import annotations

import pytest
import requests
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

from garmin_client.answers import classify
from garmin_client.errors import Unavailable

URL = "https://sso.garmin.com/mobile/api/mfa/verifyCode"


def _refused() -> requests.ConnectionError:
    reason = NewConnectionError(None, "Connection refused")  # type: ignore[arg-type]
    return requests.ConnectionError(MaxRetryError(None, URL, reason))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("failure", "unanswered"),
    [
        (requests.ReadTimeout(), True),
        (requests.ConnectionError(ProtocolError("Connection aborted.")), True),
        (requests.ConnectTimeout(), False),
        (_refused(), False),
    ],
    ids=["read-timeout", "reset-after-sending", "connect-timeout", "refused"],
)
def test_a_request_that_may_have_reached_garmin_is_told_apart(
    failure: requests.RequestException, unanswered: bool
) -> None:
    error = classify(failure, judging_tokens=False)
    assert isinstance(error, Unavailable)
    assert error.unanswered is unanswered
