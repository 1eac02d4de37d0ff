"""Request validation. Each check returns the violations it found so one INVALID_ARGUMENT
answer can list every bad field at once. Descriptions never echo secret values.

Patterns are applied with `fullmatch`: with `match`, "$" also matches before a trailing
newline, which let "alice\n" pass as a user id."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from auth_service.domain.errors import FieldViolation, InvalidArgument
from auth_service.domain.models import GarminTokens
from garmin_client.user_ids import USER_ID_RULE, is_user_id

# No control character either (NUL, BEL, DEL, ...): no email address holds one (RFC 5321), and
# a Login that sent it to Garmin would spend one of the user's sign-in attempts for nothing.
EMAIL_PATTERN = re.compile(r"[^@\s\x00-\x1f\x7f]{1,64}@[^@\s\x00-\x1f\x7f]{1,189}")
MFA_CODE_PATTERN = re.compile(r"^[0-9]{4,10}$")
TOKEN_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
# Garmin's CAS service tickets: "ST-<digits>-<random>-<suffix>" ("...-sso" today).
SERVICE_TICKET_PATTERN = re.compile(r"^ST-[0-9]{1,20}-[A-Za-z0-9]{8,100}-[a-z]{1,16}$")
MIN_EMAIL_LENGTH, MAX_EMAIL_LENGTH = 3, 254
MAX_PASSWORD_LENGTH = 256
MAX_HOLDER_LENGTH = 256
MAX_REASON_LENGTH = 512
# A credential we store and later send in an HTTP header (a bearer or refresh token, an OAuth1
# token or secret): RFC 6750's token characters are visible ASCII. Anything else (a space, a
# newline, "€") no request can carry, so it would only fail every use of the session later.
MAX_CREDENTIAL_LENGTH = 8192
CREDENTIAL_PATTERN = re.compile(rf"[\x21-\x7e]{{1,{MAX_CREDENTIAL_LENGTH}}}")
CREDENTIAL_RULE = f"must be 1-{MAX_CREDENTIAL_LENGTH} visible ASCII characters"


# An OAuth2 token type opens the same Authorization header ("Bearer <token>"): the same
# characters, and no longer than an auth scheme's name needs (Garmin's is "Bearer").
MAX_TOKEN_TYPE_LENGTH = 32
TOKEN_TYPE_PATTERN = re.compile(rf"[\x21-\x7e]{{1,{MAX_TOKEN_TYPE_LENGTH}}}")
TOKEN_TYPE_RULE = f"must be 1-{MAX_TOKEN_TYPE_LENGTH} visible ASCII characters"


def is_credential(value: str) -> bool:
    """Whether `value` can be stored as a token that HTTP headers will carry."""
    return CREDENTIAL_PATTERN.fullmatch(value) is not None


def is_token_type(value: str) -> bool:
    """Whether `value` can be stored as the token type an Authorization header opens with."""
    return TOKEN_TYPE_PATTERN.fullmatch(value) is not None


# --- Garmin's tokens ------------------------------------------------------------------------
# The limits every session given to the service meets, however it comes in: ImportSession's
# `session` and `garth_token` sources and ReportRefreshed. A stored session is handed out
# again (worker_full leases) and reported back in ReportRefreshed, so a value one way in let
# through and another refused would be a session its holder could never hand back.

# Token texts no header carries (scope, jti, a DI client id): printable, and bounded.
MAX_TOKEN_TEXT_LENGTH = 8192
TOKEN_TEXT_RULE = f"must be at most {MAX_TOKEN_TEXT_LENGTH} printable characters"
# The texts Garmin's requests carry in a header, and the rule each must meet so one can.
_HEADER_TEXT_RULES: dict[str, tuple[Callable[[str], bool], str]] = {
    "oauth_token": (is_credential, CREDENTIAL_RULE),
    "oauth_token_secret": (is_credential, CREDENTIAL_RULE),
    "mfa_token": (is_credential, CREDENTIAL_RULE),
    "access_token": (is_credential, CREDENTIAL_RULE),
    "refresh_token": (is_credential, CREDENTIAL_RULE),
    "token_type": (is_token_type, TOKEN_TYPE_RULE),
}
# An OAuth1 token signed in without MFA has no MFA token, and an OAuth2 token's scope and
# jti only describe it (a DI token answer or a token file's JWT may leave them out, and the
# service stores such a pair as Garmin gave it); every other text is required.
_OPTIONAL_TEXTS = frozenset({"mfa_token", "scope", "jti"})
OAUTH1_TEXTS = ("oauth_token", "oauth_token_secret", "mfa_token")
OAUTH2_TEXTS = ("scope", "jti", "token_type", "access_token", "refresh_token")

# The times a token may name: [1970, 9999-01-01), within what the wire carries
# (garmin_client.session_proto.timestamp_in_range). A later one is past what a database
# session in another time zone than UTC can read back (9999-12-31T23:59Z is year 10000 in
# Tokyo); Garmin issued none before 1970.
EARLIEST_TOKEN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
TOKEN_TIMES_END = datetime(9999, 1, 1, tzinfo=UTC)


def check_token_text(name: str, value: str | None, field: str) -> list[FieldViolation]:
    """The rule for the token text called `name` (a field of an OAuth1 or OAuth2 token, or
    di_client_id), applied to `value`."""
    if not value:
        return [] if name in _OPTIONAL_TEXTS else [FieldViolation(field, "is required")]
    fits, rule = _HEADER_TEXT_RULES.get(name, (_is_token_text, TOKEN_TEXT_RULE))
    return [] if fits(value) else [FieldViolation(field, rule)]


def _is_token_text(value: str) -> bool:
    return len(value) <= MAX_TOKEN_TEXT_LENGTH and value.isprintable()


def check_token_time(moment: datetime | None, field: str) -> list[FieldViolation]:
    """A token's time (None: not known) outside [EARLIEST_TOKEN_TIME, TOKEN_TIMES_END)."""
    if moment is None or EARLIEST_TOKEN_TIME <= moment < TOKEN_TIMES_END:
        return []
    return [FieldViolation(field, "is out of range")]


def check_token_times(tokens: GarminTokens, field: str = "") -> list[FieldViolation]:
    """Every time of `tokens` out of range, named under `field` ("session.oauth2.expires_at")."""
    o1, o2 = tokens.oauth1, tokens.oauth2
    times = {
        ("oauth1", "mfa_expires_at"): None if o1 is None else o1.mfa_expires_at,
        ("oauth2", "expires_at"): o2.expires_at,
        ("oauth2", "refresh_token_expires_at"): o2.refresh_token_expires_at,
    }
    return [
        violation
        for path, moment in times.items()
        for violation in check_token_time(moment, _joined(field, *path))
    ]


def check_tokens(tokens: GarminTokens, field: str = "") -> list[FieldViolation]:
    """Every field of `tokens` the service refuses to store, named under `field`. garth's
    dumps are held to it whole; a GarminSession message (api.convert) to the same two rules,
    check_token_text field by field (so one answer names every bad field) and then
    check_token_times."""
    return [
        *(
            violation
            for name, value, path in _token_texts(tokens, field)
            for violation in check_token_text(name, value, path)
        ),
        *check_token_times(tokens, field),
    ]


def _token_texts(tokens: GarminTokens, field: str) -> list[tuple[str, str | None, str]]:
    """Each text of `tokens`: its name, its value and the field naming it."""
    if tokens.oauth1 is None:
        own = [("di_client_id", tokens.di_client_id, _joined(field, "di_client_id"))]
    else:
        own = [
            (name, getattr(tokens.oauth1, name), _joined(field, "oauth1", name))
            for name in OAUTH1_TEXTS
        ]
    return own + [
        (name, getattr(tokens.oauth2, name), _joined(field, "oauth2", name))
        for name in OAUTH2_TEXTS
    ]


def _joined(*names: str) -> str:
    return ".".join(name for name in names if name)


def _printable(value: str) -> bool:
    return value.isprintable()


def in_scope(user_id: str, user_id_prefix: str | None) -> bool:
    """Whether a caller scoped to `user_id_prefix` (None: unscoped) may reach `user_id`: a
    plain prefix, case kept (no pattern: user ids may hold "_" and "%")."""
    return user_id_prefix is None or user_id.startswith(user_id_prefix)


def check_user_id(value: str, field: str = "user_id") -> list[FieldViolation]:
    if not is_user_id(value):
        return [FieldViolation(field, USER_ID_RULE)]
    return []


def check_email(value: str, field: str = "email") -> list[FieldViolation]:
    if not MIN_EMAIL_LENGTH <= len(value) <= MAX_EMAIL_LENGTH or not EMAIL_PATTERN.fullmatch(value):
        return [FieldViolation(field, "must be an email address of 3-254 characters")]
    return []


def check_password(value: str, field: str = "password") -> list[FieldViolation]:
    if not 1 <= len(value) <= MAX_PASSWORD_LENGTH:
        return [FieldViolation(field, f"must be 1-{MAX_PASSWORD_LENGTH} characters")]
    return []


def check_mfa_code(value: str, field: str = "code") -> list[FieldViolation]:
    if not MFA_CODE_PATTERN.fullmatch(value):
        return [FieldViolation(field, "must be 4-10 digits")]
    return []


def check_service_ticket(value: str, field: str = "service_ticket") -> list[FieldViolation]:
    if not SERVICE_TICKET_PATTERN.fullmatch(value):
        return [FieldViolation(field, "must be a Garmin service ticket (ST-...)")]
    return []


def check_service_url(
    value: str, allowed: tuple[str, ...], field: str = "service_url"
) -> list[FieldViolation]:
    if value not in allowed:
        return [FieldViolation(field, f"must be one of {', '.join(allowed)}")]
    return []


def check_opaque_id(value: str, field: str) -> list[FieldViolation]:
    """Lease and challenge ids are ours: anything else cannot exist, but say so plainly."""
    if not value:
        return [FieldViolation(field, "is required")]
    if not TOKEN_ID_PATTERN.fullmatch(value):
        return [FieldViolation(field, "is not a well-formed id")]
    return []


def check_holder(value: str, field: str = "holder") -> list[FieldViolation]:
    if not 1 <= len(value) <= MAX_HOLDER_LENGTH or not _printable(value):
        return [FieldViolation(field, f"must be 1-{MAX_HOLDER_LENGTH} printable characters")]
    return []


def check_reason(value: str, field: str = "reason") -> list[FieldViolation]:
    if not 1 <= len(value) <= MAX_REASON_LENGTH or not _printable(value):
        return [FieldViolation(field, f"must be 1-{MAX_REASON_LENGTH} printable characters")]
    return []


def check_duration(
    value: timedelta | None, field: str, *, minimum: timedelta, maximum: timedelta
) -> list[FieldViolation]:
    if value is None:
        return []
    if not minimum <= value <= maximum:
        return [
            FieldViolation(
                field,
                f"must be between {minimum.total_seconds():g}s and {maximum.total_seconds():g}s",
            )
        ]
    return []


def raise_if_any(*groups: Iterable[FieldViolation]) -> None:
    """Raise one InvalidArgument listing every violation, if there is any."""
    violations = [violation for group in groups for violation in group]
    if violations:
        raise InvalidArgument(violations)
