"""Every answer the service may send fits the smallest GARMIN_AUTH_MAX_MESSAGE_BYTES it
accepts (the setting bounds answers as well as requests). Before, that floor was 1 MiB, and a
full ListSessions page of sessions a worker reported invalid with the longest reason it may
give (512 characters of 4 bytes each) was 2.2 MB: the page was read, then refused
RESOURCE_EXHAUSTED "Sent message larger than max (2217000 vs. 1048576)"."""

from __future__ import annotations

import pytest
from google.protobuf import duration_pb2
from sqlalchemy import insert, select

from auth_service.config import MIN_MESSAGE_BYTES
from auth_service.storage.database import create_engine_for
from auth_service.storage.models import GarminAuthenticationState
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_emulator import GarminEmulator
from tests.fixtures.servers import Replica, ServiceFactory
from tests.service.test_status_import_delete import garmin_tokens, import_tokens

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])

PAGE = 1000  # the largest page ListSessions serves (domain.paging.MAX_PAGE_SIZE)
PREFIX = "u" * 124  # user ids of 128 characters, the longest the rule allows


def _thousand_ended_sessions(replica: Replica, garmin: GarminEmulator, database_url: str) -> None:
    """1000 users whose sessions a worker reported invalid with the longest reason the
    service accepts: 512 printable characters (check_reason), each 4 bytes in UTF-8."""
    first = f"{PREFIX}0000"
    import_tokens(replica, first, garmin_tokens(replica, garmin, "big@example.com"))
    grant = replica.call(
        "LeaseSession",
        pb.LeaseSessionRequest(user_id=first, holder="w", ttl=duration_pb2.Duration(seconds=60)),
        "worker",
    )
    replica.call(
        "ReportInvalidated",
        pb.ReportInvalidatedRequest(lease_id=grant.lease.lease_id, reason="\U0001f600" * 512),
        "worker",
    )
    engine = create_engine_for(database_url)
    try:
        with engine.begin() as connection:
            row = (
                connection.execute(
                    select(GarminAuthenticationState).where(
                        GarminAuthenticationState.user_id == first
                    )
                )
                .mappings()
                .one()
            )
            assert row["invalidated_reason"] == "\U0001f600" * 512
            copies = [{**row, "user_id": f"{PREFIX}{n:04d}"} for n in range(1, PAGE)]
            connection.execute(insert(GarminAuthenticationState), copies)
    finally:
        engine.dispose()


def test_a_full_list_sessions_page_fits_the_smallest_message_limit(
    service_factory: ServiceFactory, garmin: GarminEmulator, database_url: str
) -> None:
    replica = service_factory.start(max_message_bytes=MIN_MESSAGE_BYTES)
    _thousand_ended_sessions(replica, garmin, database_url)
    page = replica.call("ListSessions", pb.ListSessionsRequest(page_size=PAGE))
    assert len(page.sessions) == PAGE
