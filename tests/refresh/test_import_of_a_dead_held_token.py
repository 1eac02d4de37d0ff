"""README (ImportSession, and the Errors table): "A file whose refresh token Garmin rejects (an
old copy, refreshed by its client since) answers INVALID_ARGUMENT (garminconnect_tokens) and
changes nothing: the session the user has stays".

A token file holding the refresh token the row stores (a session imported field by field, the
user's client having refreshed it since) goes through SessionImport._refresh_held: Garmin's
refusal ends that session too (README), and the answer is the documented INVALID_ARGUMENT on
garminconnect_tokens. Before, the refresher's GarminSessionRejected went through as
FAILED_PRECONDITION SESSION_NOT_ACTIVE. Found by a read-only review."""

from __future__ import annotations

import json

import pytest

from auth_service.domain.errors import DomainError, InvalidArgument
from auth_service.domain.models import SessionState
from auth_service.upstream.router import UpstreamRouter
from tests.refresh import DiAccounts, Replica

pytestmark = pytest.mark.timeout(60)

USER = "import-dead-held"


def test_an_old_copy_of_the_held_token_answers_invalid_argument(
    replicas: tuple[Replica, Replica], accounts: DiAccounts, upstream: UpstreamRouter
) -> None:
    held = accounts.seed(USER)  # as an import of the pair field by field stores it
    upstream.refresh(held)  # the user's own client refreshes it: the stored token dies
    old_copy = json.dumps(
        {
            "di_token": held.oauth2.access_token,
            "di_refresh_token": held.oauth2.refresh_token,
            "di_client_id": held.di_client_id,
        }
    )
    try:
        answer: object = replicas[1].imports.import_session(USER, garminconnect_tokens=old_copy)
    except DomainError as exc:
        answer = exc
    fields = [v.field for v in answer.violations] if isinstance(answer, InvalidArgument) else []
    assert fields == ["garminconnect_tokens"], (
        f"ImportSession of a token file Garmin rejects answered {type(answer).__name__} "
        f"({getattr(answer, 'code_name', '-')} {getattr(answer, 'reason', '-')}), not "
        "INVALID_ARGUMENT on garminconnect_tokens"
    )
    # The stored session held the same dead token: Garmin's refusal ended it (README).
    assert replicas[0].sessions.get_status(USER, validate=False).state is SessionState.AUTH_EXPIRED
