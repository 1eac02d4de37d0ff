import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SessionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SESSION_STATE_UNSPECIFIED: _ClassVar[SessionState]
    SESSION_STATE_NOT_CONNECTED: _ClassVar[SessionState]
    SESSION_STATE_MFA_PENDING: _ClassVar[SessionState]
    SESSION_STATE_ACTIVE: _ClassVar[SessionState]
    SESSION_STATE_AUTH_EXPIRED: _ClassVar[SessionState]

class LoginOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOGIN_OUTCOME_UNSPECIFIED: _ClassVar[LoginOutcome]
    LOGIN_OUTCOME_AUTHENTICATED: _ClassVar[LoginOutcome]
    LOGIN_OUTCOME_MFA_REQUIRED: _ClassVar[LoginOutcome]

class SessionKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SESSION_KIND_UNSPECIFIED: _ClassVar[SessionKind]
    SESSION_KIND_GARTH: _ClassVar[SessionKind]
    SESSION_KIND_DI_OAUTH2: _ClassVar[SessionKind]
SESSION_STATE_UNSPECIFIED: SessionState
SESSION_STATE_NOT_CONNECTED: SessionState
SESSION_STATE_MFA_PENDING: SessionState
SESSION_STATE_ACTIVE: SessionState
SESSION_STATE_AUTH_EXPIRED: SessionState
LOGIN_OUTCOME_UNSPECIFIED: LoginOutcome
LOGIN_OUTCOME_AUTHENTICATED: LoginOutcome
LOGIN_OUTCOME_MFA_REQUIRED: LoginOutcome
SESSION_KIND_UNSPECIFIED: SessionKind
SESSION_KIND_GARTH: SessionKind
SESSION_KIND_DI_OAUTH2: SessionKind

class SessionStatus(_message.Message):
    __slots__ = ("user_id", "state", "last_validated_at", "access_token_expires_at", "last_synced_at", "synced_through", "invalidated_reason", "lease", "invalidated_at", "session_version", "last_sync_attempt_at", "updated_at", "kind", "refresh_token_expires_at")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_VALIDATED_AT_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SYNCED_AT_FIELD_NUMBER: _ClassVar[int]
    SYNCED_THROUGH_FIELD_NUMBER: _ClassVar[int]
    INVALIDATED_REASON_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    INVALIDATED_AT_FIELD_NUMBER: _ClassVar[int]
    SESSION_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_SYNC_ATTEMPT_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REFRESH_TOKEN_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    state: SessionState
    last_validated_at: _timestamp_pb2.Timestamp
    access_token_expires_at: _timestamp_pb2.Timestamp
    last_synced_at: _timestamp_pb2.Timestamp
    synced_through: _timestamp_pb2.Timestamp
    invalidated_reason: str
    lease: Lease
    invalidated_at: _timestamp_pb2.Timestamp
    session_version: int
    last_sync_attempt_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    kind: SessionKind
    refresh_token_expires_at: _timestamp_pb2.Timestamp
    def __init__(self, user_id: _Optional[str] = ..., state: _Optional[_Union[SessionState, str]] = ..., last_validated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., access_token_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_synced_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., synced_through: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., invalidated_reason: _Optional[str] = ..., lease: _Optional[_Union[Lease, _Mapping]] = ..., invalidated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., session_version: _Optional[int] = ..., last_sync_attempt_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[_Union[SessionKind, str]] = ..., refresh_token_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("lease_id", "user_id", "holder", "fencing_token", "acquired_at", "expires_at", "lease_ref")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACQUIRED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    LEASE_REF_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    user_id: str
    holder: str
    fencing_token: int
    acquired_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    lease_ref: str
    def __init__(self, lease_id: _Optional[str] = ..., user_id: _Optional[str] = ..., holder: _Optional[str] = ..., fencing_token: _Optional[int] = ..., acquired_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lease_ref: _Optional[str] = ...) -> None: ...

class OAuth1Token(_message.Message):
    __slots__ = ("oauth_token", "oauth_token_secret", "mfa_token", "mfa_expires_at")
    OAUTH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OAUTH_TOKEN_SECRET_FIELD_NUMBER: _ClassVar[int]
    MFA_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MFA_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    oauth_token: str
    oauth_token_secret: str
    mfa_token: str
    mfa_expires_at: _timestamp_pb2.Timestamp
    def __init__(self, oauth_token: _Optional[str] = ..., oauth_token_secret: _Optional[str] = ..., mfa_token: _Optional[str] = ..., mfa_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class OAuth2Token(_message.Message):
    __slots__ = ("scope", "jti", "token_type", "access_token", "refresh_token", "expires_at", "refresh_token_expires_at")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    JTI_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TYPE_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REFRESH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REFRESH_TOKEN_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    scope: str
    jti: str
    token_type: str
    access_token: str
    refresh_token: str
    expires_at: _timestamp_pb2.Timestamp
    refresh_token_expires_at: _timestamp_pb2.Timestamp
    def __init__(self, scope: _Optional[str] = ..., jti: _Optional[str] = ..., token_type: _Optional[str] = ..., access_token: _Optional[str] = ..., refresh_token: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., refresh_token_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AccessToken(_message.Message):
    __slots__ = ("token", "token_type", "expires_at", "domain")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TYPE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    token: str
    token_type: str
    expires_at: _timestamp_pb2.Timestamp
    domain: str
    def __init__(self, token: _Optional[str] = ..., token_type: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., domain: _Optional[str] = ...) -> None: ...

class GarminSession(_message.Message):
    __slots__ = ("oauth1", "oauth2", "domain", "di_client_id", "kind")
    OAUTH1_FIELD_NUMBER: _ClassVar[int]
    OAUTH2_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    DI_CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    oauth1: OAuth1Token
    oauth2: OAuth2Token
    domain: str
    di_client_id: str
    kind: SessionKind
    def __init__(self, oauth1: _Optional[_Union[OAuth1Token, _Mapping]] = ..., oauth2: _Optional[_Union[OAuth2Token, _Mapping]] = ..., domain: _Optional[str] = ..., di_client_id: _Optional[str] = ..., kind: _Optional[_Union[SessionKind, str]] = ...) -> None: ...

class LoginRequest(_message.Message):
    __slots__ = ("user_id", "email", "password")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    email: str
    password: str
    def __init__(self, user_id: _Optional[str] = ..., email: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class LoginResponse(_message.Message):
    __slots__ = ("outcome", "mfa_challenge_id", "mfa_method", "mfa_expires_at", "status")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    MFA_CHALLENGE_ID_FIELD_NUMBER: _ClassVar[int]
    MFA_METHOD_FIELD_NUMBER: _ClassVar[int]
    MFA_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    outcome: LoginOutcome
    mfa_challenge_id: str
    mfa_method: str
    mfa_expires_at: _timestamp_pb2.Timestamp
    status: SessionStatus
    def __init__(self, outcome: _Optional[_Union[LoginOutcome, str]] = ..., mfa_challenge_id: _Optional[str] = ..., mfa_method: _Optional[str] = ..., mfa_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status: _Optional[_Union[SessionStatus, _Mapping]] = ...) -> None: ...

class SubmitMfaRequest(_message.Message):
    __slots__ = ("mfa_challenge_id", "code")
    MFA_CHALLENGE_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    mfa_challenge_id: str
    code: str
    def __init__(self, mfa_challenge_id: _Optional[str] = ..., code: _Optional[str] = ...) -> None: ...

class SubmitMfaResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: SessionStatus
    def __init__(self, status: _Optional[_Union[SessionStatus, _Mapping]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ("user_id", "validate")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    validate: bool
    def __init__(self, user_id: _Optional[str] = ..., validate: _Optional[bool] = ...) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: SessionStatus
    def __init__(self, status: _Optional[_Union[SessionStatus, _Mapping]] = ...) -> None: ...

class ImportSessionRequest(_message.Message):
    __slots__ = ("user_id", "session", "garth_token", "garminconnect_tokens")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    GARTH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    GARMINCONNECT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    session: GarminSession
    garth_token: str
    garminconnect_tokens: str
    def __init__(self, user_id: _Optional[str] = ..., session: _Optional[_Union[GarminSession, _Mapping]] = ..., garth_token: _Optional[str] = ..., garminconnect_tokens: _Optional[str] = ...) -> None: ...

class ImportSessionResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: SessionStatus
    def __init__(self, status: _Optional[_Union[SessionStatus, _Mapping]] = ...) -> None: ...

class ExchangeServiceTicketRequest(_message.Message):
    __slots__ = ("user_id", "service_ticket", "service_url")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_TICKET_FIELD_NUMBER: _ClassVar[int]
    SERVICE_URL_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    service_ticket: str
    service_url: str
    def __init__(self, user_id: _Optional[str] = ..., service_ticket: _Optional[str] = ..., service_url: _Optional[str] = ...) -> None: ...

class ExchangeServiceTicketResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: SessionStatus
    def __init__(self, status: _Optional[_Union[SessionStatus, _Mapping]] = ...) -> None: ...

class DeleteSessionRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class DeleteSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "state", "kind")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    state: SessionState
    kind: SessionKind
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[SessionState, str]] = ..., kind: _Optional[_Union[SessionKind, str]] = ...) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions", "next_page_token")
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[SessionStatus]
    next_page_token: str
    def __init__(self, sessions: _Optional[_Iterable[_Union[SessionStatus, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class LeaseSessionRequest(_message.Message):
    __slots__ = ("user_id", "holder", "ttl")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    holder: str
    ttl: _duration_pb2.Duration
    def __init__(self, user_id: _Optional[str] = ..., holder: _Optional[str] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class LeaseSessionResponse(_message.Message):
    __slots__ = ("lease", "session", "status", "access")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    session: GarminSession
    status: SessionStatus
    access: AccessToken
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ..., session: _Optional[_Union[GarminSession, _Mapping]] = ..., status: _Optional[_Union[SessionStatus, _Mapping]] = ..., access: _Optional[_Union[AccessToken, _Mapping]] = ...) -> None: ...

class LeaseNextSessionRequest(_message.Message):
    __slots__ = ("holder", "ttl", "min_sync_interval", "release")
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    MIN_SYNC_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    holder: str
    ttl: _duration_pb2.Duration
    min_sync_interval: _duration_pb2.Duration
    release: ReleaseLeaseRequest
    def __init__(self, holder: _Optional[str] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., min_sync_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., release: _Optional[_Union[ReleaseLeaseRequest, _Mapping]] = ...) -> None: ...

class LeaseNextSessionResponse(_message.Message):
    __slots__ = ("lease", "session", "status", "access", "released")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    session: GarminSession
    status: SessionStatus
    access: AccessToken
    released: SessionStatus
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ..., session: _Optional[_Union[GarminSession, _Mapping]] = ..., status: _Optional[_Union[SessionStatus, _Mapping]] = ..., access: _Optional[_Union[AccessToken, _Mapping]] = ..., released: _Optional[_Union[SessionStatus, _Mapping]] = ...) -> None: ...

class RenewLeaseRequest(_message.Message):
    __slots__ = ("lease_id", "ttl")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    ttl: _duration_pb2.Duration
    def __init__(self, lease_id: _Optional[str] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class RenewLeaseResponse(_message.Message):
    __slots__ = ("lease",)
    LEASE_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ...) -> None: ...

class ReleaseLeaseRequest(_message.Message):
    __slots__ = ("lease_id", "synced_through", "garmin_retry_after")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    SYNCED_THROUGH_FIELD_NUMBER: _ClassVar[int]
    GARMIN_RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    synced_through: _timestamp_pb2.Timestamp
    garmin_retry_after: _duration_pb2.Duration
    def __init__(self, lease_id: _Optional[str] = ..., synced_through: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., garmin_retry_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ReleaseLeaseResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: SessionStatus
    def __init__(self, status: _Optional[_Union[SessionStatus, _Mapping]] = ...) -> None: ...

class ReportRefreshedRequest(_message.Message):
    __slots__ = ("lease_id", "session", "session_version")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_VERSION_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    session: GarminSession
    session_version: int
    def __init__(self, lease_id: _Optional[str] = ..., session: _Optional[_Union[GarminSession, _Mapping]] = ..., session_version: _Optional[int] = ...) -> None: ...

class ReportRefreshedResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: SessionStatus
    def __init__(self, status: _Optional[_Union[SessionStatus, _Mapping]] = ...) -> None: ...

class ReportInvalidatedRequest(_message.Message):
    __slots__ = ("lease_id", "reason", "session_version")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SESSION_VERSION_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    reason: str
    session_version: int
    def __init__(self, lease_id: _Optional[str] = ..., reason: _Optional[str] = ..., session_version: _Optional[int] = ...) -> None: ...

class ReportInvalidatedResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: SessionStatus
    def __init__(self, status: _Optional[_Union[SessionStatus, _Mapping]] = ...) -> None: ...

class RefreshLeaseRequest(_message.Message):
    __slots__ = ("lease_id", "session_version")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_VERSION_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    session_version: int
    def __init__(self, lease_id: _Optional[str] = ..., session_version: _Optional[int] = ...) -> None: ...

class RefreshLeaseResponse(_message.Message):
    __slots__ = ("access", "status")
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    access: AccessToken
    status: SessionStatus
    def __init__(self, access: _Optional[_Union[AccessToken, _Mapping]] = ..., status: _Optional[_Union[SessionStatus, _Mapping]] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("event_id", "occurred_at", "caller", "rpc", "user_id", "outcome_code", "outcome_reason", "lease_id", "fencing_token", "lease_ref")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    RPC_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_CODE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_REASON_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LEASE_REF_FIELD_NUMBER: _ClassVar[int]
    event_id: int
    occurred_at: _timestamp_pb2.Timestamp
    caller: str
    rpc: str
    user_id: str
    outcome_code: str
    outcome_reason: str
    lease_id: str
    fencing_token: int
    lease_ref: str
    def __init__(self, event_id: _Optional[int] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., caller: _Optional[str] = ..., rpc: _Optional[str] = ..., user_id: _Optional[str] = ..., outcome_code: _Optional[str] = ..., outcome_reason: _Optional[str] = ..., lease_id: _Optional[str] = ..., fencing_token: _Optional[int] = ..., lease_ref: _Optional[str] = ...) -> None: ...

class ListAuditEventsRequest(_message.Message):
    __slots__ = ("user_id", "start_time", "end_time", "page_size", "page_token", "oldest_first")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OLDEST_FIRST_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    oldest_first: bool
    def __init__(self, user_id: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., oldest_first: _Optional[bool] = ...) -> None: ...

class ListAuditEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchSessionEventsRequest(_message.Message):
    __slots__ = ("after_cursor", "states", "user_id")
    AFTER_CURSOR_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    after_cursor: str
    states: _containers.RepeatedScalarFieldContainer[SessionState]
    user_id: str
    def __init__(self, after_cursor: _Optional[str] = ..., states: _Optional[_Iterable[_Union[SessionState, str]]] = ..., user_id: _Optional[str] = ...) -> None: ...

class SessionEvent(_message.Message):
    __slots__ = ("cursor", "status", "rpc", "occurred_at")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RPC_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    status: SessionStatus
    rpc: str
    occurred_at: _timestamp_pb2.Timestamp
    def __init__(self, cursor: _Optional[str] = ..., status: _Optional[_Union[SessionStatus, _Mapping]] = ..., rpc: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
