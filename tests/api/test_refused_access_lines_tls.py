"""Under mutual TLS a token-less caller is identified on the worker thread, by its client
certificate: a role refusal's access line names that caller too (tests/api/
test_refused_access_lines.py has the token callers)."""

from __future__ import annotations

import logging

import grpc
import pytest

from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_auth.v1 import garmin_auth_pb2_grpc as pb_grpc
from tests.api.test_refused_access_lines import caller_and_outcome
from tests.fixtures.servers import expect_failure
from tests.service import test_tls

# The TLS fixtures of tests/service/test_tls.py (SQLite only: TLS does not touch the database).
backend = test_tls.backend
pki = test_tls.pki
start_tls = test_tls.start_tls


def test_a_role_refusal_of_a_certificate_caller_names_it(
    start_tls: test_tls.StartTls, pki: test_tls.Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="auth_service.rpc")
    server = start_tls(mutual=True)
    worker = pb_grpc.GarminAuthServiceStub(server.channel(client=pki.worker))
    failure = expect_failure(lambda: worker.ListSessions(pb.ListSessionsRequest(), timeout=5))
    assert (failure.code, failure.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_FORBIDDEN")
    assert caller_and_outcome(caplog, "ListSessions") == [
        ("worker-by-certificate", "CALLER_FORBIDDEN")
    ]
