"""Hostile input: every RPC fuzzed with hypothesis over real gRPC, on SQLite and PostgreSQL.

One server per backend for the whole module (in process, port 0, a message limit of 256 KiB
so huge fields reach it cheaply), with a Garmin emulator behind it. Requests are generated
from the proto's own message classes: any field may be missing; strings are random, boundary
(128/129 characters, a trailing newline, NUL and other control characters, bidi overrides,
emoji, SQL), id-shaped, or huge (up to and past the limit); ids are random bytes; durations
and timestamps span their whole int64/int32 range; enums take unknown numbers; page tokens
are crafted with every shape of position. Besides, each RPC receives well-formed messages of
every other type, and random bytes.

The properties:
- an answer is OK or a documented (code, ErrorInfo reason) of the README's table, never
  INTERNAL, UNKNOWN or DATABASE_UNAVAILABLE; a request over the limit is refused by gRPC with
  RESOURCE_EXHAUSTED before the service sees it, and one under it never is;
- fields that break a documented rule (user_id, MFA code, lease and challenge ids, ttl)
  answer INVALID_ARGUMENT naming that field;
- random credentials are CALLER_UNAUTHENTICATED;
- the server keeps serving: health answers SERVING after every test.

Budget: ~50 examples per property and RPC, no deadline, no example database on disk.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from collections.abc import Callable, Iterator
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auth_service.api.callers import RPC_ROLES
from auth_service.api.errors import DATABASE_UNAVAILABLE_ROW, documented_rows
from auth_service.config import Settings
from auth_service.crypto import Keyring
from auth_service.domain.audit import AuditFilter
from auth_service.domain.paging import Pager
from auth_service.domain.policies import LoginSettings
from auth_service.server import RunningServer, build_application, start_server
from auth_service.storage.schema import upgrade_to_head
from garmin_auth.v1 import garmin_auth_pb2 as pb
from garmin_client.settings import UpstreamSettings
from tests.fixtures.database import PostgresServer, sqlite_url
from tests.fixtures.emulators import scanned_emulator
from tests.fixtures.servers import (
    CONSUMER_KEY,
    CONSUMER_SECRET,
    ROLE_TOKENS,
    failure_of,
    first_answer,
    write_callers_file,
)

from . import PASSWORD, record_figures, session_proto

pytestmark = pytest.mark.timeout(240)

SERVICE = "garmin_auth.v1.GarminAuthService"
LIMIT = 256 * 1024
RPCS = sorted(RPC_ROLES)
SERVICE_METHODS = pb.DESCRIPTOR.services_by_name["GarminAuthService"].methods_by_name
EXAMPLES = 50
# Every documented answer but the ones bad input must never cause.
DOCUMENTED = {(row.code.name, row.reason) for row in documented_rows() - {DATABASE_UNAVAILABLE_ROW}}
OVER_THE_LIMIT = ("RESOURCE_EXHAUSTED", "")
INVALID = ("INVALID_ARGUMENT", "INVALID_ARGUMENT")

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)

# --- documented rules, as oracles --------------------------------------------------------------

USER_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._@:+-"
ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


def valid_user_id(value: str) -> bool:
    shape = re.fullmatch(r"[A-Za-z0-9._@:+\-]{1,128}", value, flags=re.ASCII) is not None
    return shape and value not in {".", ".."}


def valid_opaque_id(value: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9_\-]{16,64}", value, flags=re.ASCII) is not None


def valid_code(value: str) -> bool:
    return re.fullmatch(r"[0-9]{4,10}", value, flags=re.ASCII) is not None


# --- strategies --------------------------------------------------------------------------------

BOUNDARY_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\n",
    "alice\n",
    "\r\n",
    "\t",
    "\x1b[31m",
    "\u202eevil",
    "\ufeff",
    "\u2028",
    "\U0001f600" * 40,
    "é" * 129,
    "a" * 128,
    "a" * 129,
    "0" * 3,
    "0" * 4,
    "0" * 10,
    "0" * 11,
    "x" * 15,
    "x" * 16,
    "x" * 64,
    "x" * 65,
    "'; DROP TABLE garmin_authentication_state; --",
    "%s%s%n",
    "../../etc/passwd",
    "null",
    "{}",
    "Bearer x",
]
huge_strings = st.integers(1_000, LIMIT + 1_000).map(lambda n: "x" * n)
strings = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=40),
    st.sampled_from(BOUNDARY_STRINGS),
    st.text(alphabet=USER_ID_CHARS, min_size=1, max_size=130),
    st.text(st.characters(codec="utf-8", categories=["Cc", "Cf", "Zl", "Zp", "Zs"]), max_size=8),
    huge_strings,
)
random_bytes_ids = st.one_of(
    st.binary(max_size=64).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")),
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
    st.text(alphabet=ID_CHARS, min_size=14, max_size=66),
)
ids = st.one_of(random_bytes_ids, strings)
user_ids = st.one_of(
    st.text(alphabet=USER_ID_CHARS, min_size=1, max_size=130),
    st.sampled_from([".", "..", "..."]),
    strings,
)
codes = st.one_of(st.text(alphabet="0123456789", max_size=12), strings)
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
BOUNDARY_SECONDS = [
    -1,
    0,
    1,
    4,
    5,
    3600,
    3601,
    30 * 86400,
    30 * 86400 + 1,
    315_576_000_000,
    315_576_000_001,
    253_402_300_799,
    2**63 - 1,
    -(2**63),
]
seconds = st.one_of(st.sampled_from(BOUNDARY_SECONDS), INT64, st.integers(-10_000, 10_000))
nanos = st.one_of(st.sampled_from([0, 1, -1, 999_999_999, 10**9, -(10**9)]), INT32)
durations = st.builds(duration_pb2.Duration, seconds=seconds, nanos=nanos)
timestamps = st.builds(timestamp_pb2.Timestamp, seconds=seconds, nanos=nanos)


def json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner)


json_values = st.recursive(
    st.none() | st.booleans() | INT64 | st.integers() | st.floats(allow_nan=False) | strings,
    json_containers,
    max_leaves=6,
)
offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
iso_times = st.one_of(
    st.datetimes(timezones=offsets).map(lambda moment: moment.isoformat()),
    st.sampled_from(["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00", "2026-01-01"]),
    strings,
)
AUDIT_FINGERPRINT = AuditFilter(
    user_id=None, start_time=None, end_time=None, oldest_first=False
).fingerprint()
# Page tokens as an attacker makes them: well formed, signed with a key the service lacks.
FORGED = Pager([b"a key the service does not hold!"])
encode_page_token = FORGED.issue
page_tokens = st.one_of(
    strings,
    # Tokens shaped like the service's for a request without filters, holding any position
    # at all, under a forged signature.
    st.builds(
        lambda after: encode_page_token({"after": after}, None),
        st.one_of(json_values, user_ids),
    ),
    st.builds(
        lambda at, event_id: encode_page_token({"at": at, "id": event_id}, AUDIT_FINGERPRINT),
        iso_times,
        st.one_of(INT64, st.integers(), json_values),
    ),
    st.builds(lambda raw: base64.urlsafe_b64encode(raw).decode(), st.binary(max_size=200)),
)
garth_tokens = st.one_of(
    strings,
    st.builds(lambda v: base64.b64encode(json.dumps(v).encode()).decode(), json_values),
    st.integers(1, 200_000).map(lambda depth: base64.b64encode(b"[" * depth).decode()),
)
BY_NAME: dict[str, st.SearchStrategy[Any]] = {
    "user_id": user_ids,
    "lease_id": ids,
    "mfa_challenge_id": ids,
    "code": codes,
    "page_token": page_tokens,
    "email": st.one_of(st.emails(), strings),
    "password": st.one_of(st.just(PASSWORD), strings),
    "garth_token": garth_tokens,
}
SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_INT32: INT32,
    FieldDescriptor.TYPE_SINT32: INT32,
    FieldDescriptor.TYPE_SFIXED32: INT32,
    FieldDescriptor.TYPE_INT64: INT64,
    FieldDescriptor.TYPE_SINT64: INT64,
    FieldDescriptor.TYPE_SFIXED64: INT64,
    FieldDescriptor.TYPE_UINT32: st.integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: st.integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: st.integers(0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: st.integers(0, 2**64 - 1),
    # Open enums: numbers no enum value has are valid on the wire.
    FieldDescriptor.TYPE_ENUM: st.one_of(st.integers(-1, 6), INT32),
    FieldDescriptor.TYPE_DOUBLE: st.floats(),
    FieldDescriptor.TYPE_FLOAT: st.floats(width=32),
    FieldDescriptor.TYPE_BYTES: st.binary(max_size=64),
    FieldDescriptor.TYPE_STRING: strings,
}
MAX_DEPTH = 3


def message_class(descriptor: Descriptor) -> type[Message]:
    if descriptor.full_name == "google.protobuf.Duration":
        return duration_pb2.Duration
    if descriptor.full_name == "google.protobuf.Timestamp":
        return timestamp_pb2.Timestamp
    cls: type[Message] = getattr(pb, descriptor.name)
    return cls


def field_values(field: Any, depth: int) -> st.SearchStrategy[Any] | None:
    """Values for one field (a FieldDescriptor; upb's and the pure-Python one differ in type)."""
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        name = field.message_type.full_name
        if name == "google.protobuf.Duration":
            return durations
        if name == "google.protobuf.Timestamp":
            return timestamps
        if depth >= MAX_DEPTH:
            return None
        nested: st.SearchStrategy[Any] = messages(message_class(field.message_type), depth + 1)
        return nested
    values: st.SearchStrategy[Any] = BY_NAME.get(field.name, SCALARS[field.type])
    return values


@st.composite
def messages(draw: st.DrawFn, cls: type[Message], depth: int = 0) -> Message:
    """A `cls` with a random subset of its fields set to hostile values (recursively)."""
    message = cls()
    for field in cls.DESCRIPTOR.fields:
        values = field_values(field, depth)
        if values is None or not draw(st.booleans()):
            continue  # a missing field
        if field.is_repeated:
            container = getattr(message, field.name)
            for value in draw(st.lists(values, max_size=3)):
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    container.add().CopyFrom(value)
                else:
                    container.append(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(message, field.name).CopyFrom(draw(values))
        else:
            setattr(message, field.name, draw(values))
    return message


ALL_MESSAGE_CLASSES = [getattr(pb, name) for name in pb.DESCRIPTOR.message_types_by_name]

# --- the server under attack -------------------------------------------------------------------


class Target:
    """The server under attack (not a dataclass: hypothesis prints examples' arguments field
    by field, and the server's settings hold the key ring)."""

    def __init__(self, running: RunningServer, channel: grpc.Channel, backend: str) -> None:
        self.running, self.channel, self.backend = running, channel, backend

    def __repr__(self) -> str:
        return f"Target({self.backend})"

    def raw(self, rpc: str) -> grpc.UnaryUnaryMultiCallable:
        """The RPC with bytes in and out: any payload can be sent."""
        return self.channel.unary_unary(
            f"/{SERVICE}/{rpc}",
            request_serializer=lambda payload: payload,
            response_deserializer=lambda payload: payload,
        )

    def raw_stream(self, rpc: str) -> grpc.UnaryStreamMultiCallable:
        """A server-streaming RPC with bytes in and out."""
        return self.channel.unary_stream(
            f"/{SERVICE}/{rpc}",
            request_serializer=lambda payload: payload,
            response_deserializer=lambda payload: payload,
        )

    def send(
        self, rpc: str, payload: bytes, token: str | None = None, role: str | None = None
    ) -> tuple[str, str]:
        """Send `payload` as `rpc` (as a caller of `role`, by default one the RPC allows):
        (code, reason), ("OK", "") on success. Every failure must carry our ErrorInfo, except
        gRPC's own refusal of an oversized message."""
        role = role or sorted(RPC_ROLES[rpc])[0]
        credential = token if token is not None else f"Bearer {ROLE_TOKENS[role]}"
        metadata = (("authorization", credential),)
        try:
            if SERVICE_METHODS[rpc].server_streaming:
                # A stream that was let in follows for ever: its first message is the answer.
                first_answer(self.raw_stream(rpc)(payload, metadata=metadata, timeout=30))
            else:
                self.raw(rpc)(payload, metadata=metadata, timeout=30)
        except grpc.RpcError as error:
            failure = failure_of(error)
            if failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED and not failure.reason:
                return OVER_THE_LIMIT
            return failure.code.name, failure.reason
        return "OK", ""

    def serving(self) -> bool:
        answer = health_pb2_grpc.HealthStub(self.channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ],
)
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    folder = tmp_path_factory.mktemp("fuzz")
    drop: Callable[[], None] = lambda: None  # noqa: E731
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("pg_server")
        url = server.create_database()
        upgrade_to_head(url)
        drop = lambda: server.drop_database(url)  # noqa: E731
    else:
        template: Path = request.getfixturevalue("sqlite_template")
        shutil.copyfile(template, folder / "fuzz.sqlite3")
        url = sqlite_url(folder / "fuzz.sqlite3")
    with scanned_emulator(consumer_key=CONSUMER_KEY, consumer_secret=CONSUMER_SECRET) as garmin:
        garmin.add_user("fuzz@example.com", PASSWORD, mfa=True, mfa_code="123456")
        settings_ = Settings(
            database_url=url,
            keyring=Keyring.parse(Keyring.generate_key_value("fuzz")),
            upstream=UpstreamSettings(
                consumer_key=CONSUMER_KEY,
                consumer_secret=CONSUMER_SECRET,
                base_url=garmin.url,
                timeout_seconds=2.0,
                retries=0,
            ),
            callers_file=write_callers_file(folder / "callers.toml"),
            grace_period_seconds=0,
            max_message_bytes=LIMIT,
            login=LoginSettings(limit=1000, window_seconds=3600),
        )
        running = start_server(build_application(settings_), "127.0.0.1:0")
        channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
        target = Target(running, channel, request.param)
        # Something to find: an ACTIVE user with a live lease, and a pending MFA challenge.
        admin = (("authorization", f"Bearer {ROLE_TOKENS['admin']}"),)
        worker = (("authorization", f"Bearer {ROLE_TOKENS['worker']}"),)
        stub = pb_stub(channel)
        stub.ImportSession(
            pb.ImportSessionRequest(user_id="fuzz-user", session=session_proto("fuzz")),
            metadata=admin,
        )
        stub.LeaseSession(pb.LeaseSessionRequest(user_id="fuzz-user", holder="h"), metadata=worker)
        stub.Login(
            pb.LoginRequest(user_id="fuzz-mfa", email="fuzz@example.com", password=PASSWORD),
            metadata=admin,
        )
        try:
            yield target
        finally:
            channel.close()
            running.stop(grace=0)
            drop()


def pb_stub(channel: grpc.Channel) -> Any:
    from garmin_auth.v1 import garmin_auth_pb2_grpc  # noqa: PLC0415 - keeps the header short

    return garmin_auth_pb2_grpc.GarminAuthServiceStub(channel)


def request_class(rpc: str) -> type[Message]:
    cls: type[Message] = getattr(pb, f"{rpc}Request")
    return cls


def check_documented(target: Target, rpc: str, message: Message, answer: tuple[str, str]) -> None:
    if message.ByteSize() > LIMIT:
        assert answer == OVER_THE_LIMIT, (rpc, message.ByteSize(), answer)
        return
    assert answer != OVER_THE_LIMIT, (rpc, message.ByteSize())
    assert answer == ("OK", "") or answer in DOCUMENTED, (rpc, answer)


# --- properties --------------------------------------------------------------------------------


@pytest.mark.parametrize("rpc", RPCS)
def test_every_rpc_answers_only_documented_codes(target: Target, rpc: str) -> None:
    seen: dict[tuple[str, str], int] = {}

    @FUZZ
    @given(message=messages(request_class(rpc)))
    def run(message: Message) -> None:
        answer = target.send(rpc, message.SerializeToString())
        seen[answer] = seen.get(answer, 0) + 1
        check_documented(target, rpc, message, answer)

    run()
    assert target.serving()
    record_figures("test_fuzz", backend=target.backend, rpc=rpc, inputs=sum(seen.values()))


@pytest.mark.parametrize("rpc", RPCS)
def test_messages_of_other_types_and_random_bytes_are_refused_as_documented(
    target: Target, rpc: str
) -> None:
    count = 0
    other_types = st.sampled_from(ALL_MESSAGE_CLASSES).flatmap(messages)

    @FUZZ
    @given(payload=st.one_of(other_types.map(lambda m: m.SerializeToString()), st.binary()))
    def run(payload: bytes) -> None:
        nonlocal count
        count += 1
        answer = target.send(rpc, payload)
        if len(payload) > LIMIT:
            assert answer == OVER_THE_LIMIT
        else:
            assert answer == ("OK", "") or answer in DOCUMENTED, (rpc, payload[:80], answer)

    run()
    assert target.serving()
    record_figures("test_fuzz_wrong_types", backend=target.backend, rpc=rpc, inputs=count)


def fields_named(rpc: str, name: str) -> bool:
    return name in request_class(rpc).DESCRIPTOR.fields_by_name


@FUZZ
@given(user_id=user_ids, rpc=st.sampled_from(["GetStatus", "DeleteSession", "LeaseSession"]))
def test_user_ids_outside_the_documented_rule_are_invalid(
    target: Target, user_id: str, rpc: str
) -> None:
    request: Any = request_class(rpc)(user_id=user_id)
    if fields_named(rpc, "holder"):
        request.holder = "fuzzer"
    answer = target.send(rpc, request.SerializeToString())
    if request.ByteSize() > LIMIT:
        assert answer == OVER_THE_LIMIT
    elif valid_user_id(user_id):
        # Whatever the fuzzing stored under that id (a leased, expired or rejected session).
        assert answer == ("OK", "") or answer in DOCUMENTED - {INVALID}, (user_id, answer)
    else:
        assert answer == ("INVALID_ARGUMENT", "INVALID_ARGUMENT"), (user_id, answer)


@FUZZ
@given(
    lease_id=ids,
    rpc=st.sampled_from(["RenewLease", "ReleaseLease", "ReportInvalidated"]),
)
def test_lease_ids_outside_the_documented_rule_are_invalid(
    target: Target, lease_id: str, rpc: str
) -> None:
    request: Any = request_class(rpc)(lease_id=lease_id)
    if fields_named(rpc, "reason"):
        request.reason = "fuzzing"
    answer = target.send(rpc, request.SerializeToString())
    if request.ByteSize() > LIMIT:
        assert answer == OVER_THE_LIMIT
    elif valid_opaque_id(lease_id):
        # Nobody can guess a live lease id.
        assert answer == ("FAILED_PRECONDITION", "LEASE_LOST"), (lease_id, answer)
    else:
        assert answer == ("INVALID_ARGUMENT", "INVALID_ARGUMENT"), (lease_id, answer)


@FUZZ
@given(challenge_id=ids, code=codes)
def test_challenge_ids_and_codes_outside_the_documented_rules_are_invalid(
    target: Target, challenge_id: str, code: str
) -> None:
    request = pb.SubmitMfaRequest(mfa_challenge_id=challenge_id, code=code)
    answer = target.send("SubmitMfa", request.SerializeToString())
    if request.ByteSize() > LIMIT:
        assert answer == OVER_THE_LIMIT
    elif valid_opaque_id(challenge_id) and valid_code(code):
        assert answer == ("NOT_FOUND", "MFA_CHALLENGE_NOT_FOUND"), answer
    else:
        assert answer == ("INVALID_ARGUMENT", "INVALID_ARGUMENT"), (challenge_id, code, answer)


def within(duration: duration_pb2.Duration, low: timedelta, high: timedelta) -> bool:
    """The documented bounds, on the value the service reads (microsecond precision; beyond
    +-10,000 years, or with nanos of the other sign than seconds, a Duration is malformed)."""
    if abs(duration.seconds) > 315_576_000_000 or abs(duration.nanos) >= 10**9:
        return False
    if duration.seconds * duration.nanos < 0:
        return False
    value = timedelta(seconds=duration.seconds, microseconds=duration.nanos // 1000)
    return low <= value <= high


@FUZZ
@given(ttl=durations, interval=st.one_of(st.none(), durations))
def test_durations_outside_their_bounds_are_invalid(
    target: Target, ttl: duration_pb2.Duration, interval: duration_pb2.Duration | None
) -> None:
    request = pb.LeaseNextSessionRequest(holder="fuzzer", ttl=ttl, min_sync_interval=interval)
    answer = target.send("LeaseNextSession", request.SerializeToString())
    ttl_ok = within(ttl, timedelta(seconds=5), timedelta(seconds=3600))
    interval_ok = interval is None or within(interval, timedelta(0), timedelta(days=30))
    if ttl_ok and interval_ok:
        # A lease, or none when nothing is due (a due session Garmin rejects is skipped).
        assert answer == ("OK", "") or answer in DOCUMENTED - {INVALID}, (ttl, interval, answer)
    else:
        assert answer == INVALID, (ttl, interval, answer)


@FUZZ
@given(
    token=st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=0, max_size=200
    ),
    rpc=st.sampled_from(RPCS),
)
def test_random_credentials_are_unauthenticated(target: Target, token: str, rpc: str) -> None:
    answer = target.send(rpc, b"", token=token)
    assert answer == ("UNAUTHENTICATED", "CALLER_UNAUTHENTICATED"), (token, answer)


@pytest.mark.parametrize("rpc", RPCS)
def test_a_message_over_the_configured_maximum_is_refused_by_grpc(target: Target, rpc: str) -> None:
    # Field 1 of every request is a string or a message: a length-delimited field of
    # LIMIT bytes makes a message just over the limit.
    oversized = b"\x0a" + _varint(LIMIT) + b"a" * LIMIT
    assert len(oversized) > LIMIT
    assert target.send(rpc, oversized) == OVER_THE_LIMIT
    # Just under the limit the message reaches the service, which refuses the field.
    size = LIMIT - 16
    under = b"\x0a" + _varint(size) + b"a" * size
    assert len(under) <= LIMIT
    answer = target.send(rpc, under)
    assert answer != OVER_THE_LIMIT
    assert answer == ("OK", "") or answer in DOCUMENTED
    assert target.serving()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_the_server_still_serves_and_stored_nothing_from_the_fuzz(target: Target) -> None:
    assert target.serving()
    stub = pb_stub(target.channel)
    admin = (("authorization", f"Bearer {ROLE_TOKENS['admin']}"),)
    status = stub.GetStatus(pb.GetStatusRequest(user_id="fuzz-user"), metadata=admin).status
    assert status.state == pb.SESSION_STATE_ACTIVE
    assert status.HasField("lease")
    assert status.lease.holder == "h"


# --- what the fuzzing found, pinned (each answered INTERNAL before its fix) ---------------------

FOUND = {
    "undecodable-bytes": ("GetStatus", b"\x0a\x05abc"),
    "invalid-utf8-in-a-string": ("GetStatus", b"\x0a\x02\xff\xfe"),
    "page-token-after-with-nul": (
        "ListSessions",
        pb.ListSessionsRequest(
            page_token=encode_page_token({"after": "a\x00b"}, None)
        ).SerializeToString(),
    ),
    "page-token-id-beyond-bigint": (
        "ListAuditEvents",
        pb.ListAuditEventsRequest(
            page_token=encode_page_token(
                {"at": "2026-01-01T00:00:00+00:00", "id": 2**70}, AUDIT_FINGERPRINT
            )
        ).SerializeToString(),
    ),
    "page-token-time-overflowing-utc": (
        "ListAuditEvents",
        pb.ListAuditEventsRequest(
            page_token=encode_page_token(
                {"at": "9999-12-31T23:59:59-05:00", "id": 1}, AUDIT_FINGERPRINT
            )
        ).SerializeToString(),
    ),
    "garth-token-nested-too-deep": (
        "ImportSession",
        pb.ImportSessionRequest(
            user_id="deep", garth_token=base64.b64encode(b"[" * 100_000).decode()
        ).SerializeToString(),
    ),
    "garminconnect-tokens-nested-too-deep": (
        "ImportSession",
        pb.ImportSessionRequest(
            user_id="deep", garminconnect_tokens="[" * 100_000
        ).SerializeToString(),
    ),
    "service-ticket-with-a-trailing-newline": (
        "ExchangeServiceTicket",
        pb.ExchangeServiceTicketRequest(
            user_id="alice", service_ticket="ST-0000001-abcdefghijABCDEFGHIJ-sso\n"
        ).SerializeToString(),
    ),
    "user-id-with-a-trailing-newline": (
        "DeleteSession",
        pb.DeleteSessionRequest(user_id="alice\n").SerializeToString(),
    ),
}


@pytest.mark.parametrize("case", sorted(FOUND))
def test_what_the_fuzzing_found_is_invalid_argument(target: Target, case: str) -> None:
    rpc, payload = FOUND[case]
    assert target.send(rpc, payload) == ("INVALID_ARGUMENT", "INVALID_ARGUMENT")
