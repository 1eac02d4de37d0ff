"""Request validation. Each check returns the violations it found so one INVALID_ARGUMENT
answer can list every bad field at once. Descriptions never echo secret values.

Patterns are applied with `fullmatch`: with `match`, "$" also matches before a trailing
newline, which let "alice\n" pass as a user id."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta

from auth_service.domain.errors import FieldViolation, InvalidArgument
from garmin_client.user_ids import USER_ID_RULE, is_user_id

EMAIL_PATTERN = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,189}$")
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
