"""Page tokens are signed: an altered or forged one is refused before any query runs, and a
token handed out before a key rotation keeps working after it (ListSessions, ListAuditEvents)."""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import Engine, event

from auth_service.config import Settings
from auth_service.crypto import Keyring
from auth_service.domain.audit import AuditFilter
from auth_service.domain.errors import InvalidArgument
from auth_service.domain.paging import Pager
from auth_service.server import Application, build_application
from tests.reliability import fake_tokens

USERS = ("user-a", "user-b", "user-c")


@pytest.fixture
def application(service_settings: Settings) -> Iterator[Application]:
    application = build_application(service_settings)
    for user_id in USERS:
        application.use_cases.imports.import_session(
            user_id, tokens=fake_tokens(user_id), garth_token=None
        )
    yield application
    application.engine.dispose()


class StatementCounter:
    """Counts the statements an engine sends while it is installed."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.statements: list[str] = []

    def __call__(self, *args: Any) -> None:
        self.statements.append(args[2])

    def __enter__(self) -> StatementCounter:
        event.listen(self.engine, "before_cursor_execute", self)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self)


def _with_position(token: str, position: dict[str, Any]) -> str:
    """The token with another position in its body, its signature kept."""
    body, _, signature = token.partition(".")
    payload = json.loads(base64.urlsafe_b64decode(body))
    payload["position"] = position
    altered = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()
    return f"{altered}.{signature}"


def _sessions_page(application: Application) -> Callable[[str], list[str]]:
    def page(token: str) -> list[str]:
        listed = application.use_cases.sessions.list_sessions(
            page_size=1, page_token=token, state=None
        )
        return [status.user_id for status in listed.sessions]

    return page


def _refused_without_a_query(application: Application, call: Callable[[], object]) -> None:
    with StatementCounter(application.engine) as counter, pytest.raises(InvalidArgument) as error:
        call()
    assert [violation.field for violation in error.value.violations] == ["page_token"]
    assert counter.statements == []


def test_an_altered_or_forged_sessions_token_never_reaches_a_query(
    application: Application,
) -> None:
    sessions = application.use_cases.sessions
    first = sessions.list_sessions(page_size=1, page_token="", state=None)
    assert [status.user_id for status in first.sessions] == ["user-a"]
    token = first.next_page_token
    assert _sessions_page(application)(token) == ["user-b"]

    altered = _with_position(token, {"after": "user-b"})
    forged = Pager([b"a key the service does not hold!"]).issue({"after": "user-b"}, None)
    for bad in (altered, forged, token + "x", token.partition(".")[0]):
        _refused_without_a_query(
            application,
            functools.partial(sessions.list_sessions, page_size=1, page_token=bad, state=None),
        )


def test_an_altered_audit_token_never_reaches_a_query(application: Application) -> None:
    audit_log = application.use_cases.audit_log
    query = AuditFilter()
    first = audit_log.list_events(query, page_size=1, page_token="")
    assert len(first.events) == 1
    altered = _with_position(first.next_page_token, {"at": "2026-01-01T00:00:00+00:00", "id": 1})
    _refused_without_a_query(
        application, lambda: audit_log.list_events(query, page_size=1, page_token=altered)
    )


def test_tokens_signed_before_a_key_rotation_still_work(
    application: Application, service_settings: Settings
) -> None:
    token = application.use_cases.sessions.list_sessions(
        page_size=1, page_token="", state=None
    ).next_page_token
    old = service_settings.keyring
    rotated = Keyring((*Keyring.parse(Keyring.generate_key_value("next")).keys, *old.keys))
    after_rotation = build_application(replace(service_settings, keyring=rotated))
    try:
        assert _sessions_page(after_rotation)(token) == ["user-b"]
        # ...and what the rotated replica signs, a replica still on the old ring refuses
        # only once the new key is unknown to it.
        newer = after_rotation.use_cases.sessions.list_sessions(
            page_size=2, page_token="", state=None
        ).next_page_token
        with pytest.raises(InvalidArgument):
            _sessions_page(application)(newer)
    finally:
        after_rotation.engine.dispose()
