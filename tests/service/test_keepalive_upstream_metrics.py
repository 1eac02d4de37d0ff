"""garmin_auth_upstream_requests_total / _request_seconds count every request to Garmin, keep-
alive's refreshes included. Before, they reached nobody: garmin_client's observer forwards
to the listener of the RPC in progress, and keep-alive runs outside any RPC (in threads of its
own), so garmin_auth_refreshes_total counted the refresh and no upstream series its request."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from auth_service.domain.policies import DiSettings, LoginFlow
from auth_service.storage.database import create_engine_for
from garmin_emulator import GarminEmulator
from tests.fixtures.servers import ServiceFactory
from tests.service.test_login import login
from tests.service.test_metrics import moved, sqlite_only, with_metrics

TOKEN = {"endpoint": "/di-oauth2-service/oauth/token", "outcome": "2xx"}


@sqlite_only
def test_keepalive_refresh_is_counted_as_a_request_to_garmin(
    service_factory: ServiceFactory, garmin: GarminEmulator, database_url: str, backend: str
) -> None:
    replica = with_metrics(service_factory, login_flow=LoginFlow.DI, di=DiSettings(plain_http=True))
    garmin.add_user("kay@example.com", "correct horse battery staple")
    login(replica, "kay", "kay@example.com")
    application = replica.running.application
    soon = application.use_cases.keepalive._uow.now() + timedelta(days=1)
    engine = create_engine_for(database_url)
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE garmin_authentication_state SET refresh_token_expires_at = :soon"),
            {"soon": soon.replace(tzinfo=None)},
        )
    engine.dispose()

    delta = moved(replica, application.use_cases.keepalive.run_once)

    # The refresh happened, and the refresh counter saw it ...
    assert delta("garmin_auth_refreshes_total", kind="DI_OAUTH2", outcome="rotated") == 1
    # ... but the request it sent to Garmin is in no upstream series.
    assert delta("garmin_auth_upstream_requests_total", **TOKEN) == 1
