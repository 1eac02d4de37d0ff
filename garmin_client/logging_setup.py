"""Structured logs: one JSON object per line, with a redaction filter as the last line of
defence (anything that looks like a token, password or key is masked even if a future log
call passes one by mistake)."""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from datetime import UTC, datetime
from typing import Any

REDACTED = "[REDACTED]"
# Fields a log record may carry as `extra`; everything else stays out of the line.
CONTEXT_FIELDS = ("rpc", "caller", "user_id", "lease_id", "outcome", "latency_ms", "callers")
# Each pattern, with the texts one of which a line must hold (case-folded) for the pattern to
# match at all: a line holding none of them is not searched with it (most lines, every
# access-log field). An empty tuple: always searched.
_SECRET_PATTERNS: list[tuple[re.Pattern[str], tuple[str, ...]]] = [
    # Bearer values come first: the key=value pattern below masks only the next word, which
    # in "Authorization: Bearer <token>" is "Bearer", and the token would stay.
    # A bearer value inside quotes (the repr of a raw header, b'Bearer abc\xa0def') is masked
    # up to its closing quote: a byte no token holds (escaped, non-ASCII, punctuation) must
    # not end the mask early and leave the rest of the credential in the line.
    (re.compile(r"""(?i)((['"])[^'"\n]*?\bbearer\s+)((?:\\.|(?!\2)[^\\\n])+)"""), ("bearer",)),
    # An unquoted one: token characters, and past a non-ASCII character or an escape too.
    (re.compile(r"(?i)(bearer\s+)((?:[A-Za-z0-9._~+/=-]|[^\x00-\x7f]|\\.)+)"), ("bearer",)),
    # HTTP Basic credentials (user:password in base64), for the same reason: after an
    # Authorization key whatever follows, elsewhere a base64 run long enough to be one
    # (ordinary words after "Basic" stay).
    (
        re.compile(r"""(?i)(authorization["']?\s*[:=]\s*["']?basic\s+)([^\s"',;]+)"""),
        ("authorization",),
    ),
    (re.compile(r"(Basic\s+)([A-Za-z0-9+/]{16,}={0,2})"), ("basic",)),
    # A Cookie or Set-Cookie header: every cookie after it, to the end of the line (the
    # key=value pattern below would mask the first one only).
    (re.compile(r"(?i)(cookie\s*:\s*)([^\n]+)"), ("cookie",)),
    # A URL's password (scheme://user:password@host), a database URL's included; one masked
    # already (redacted_database_url's "***") is left as it is.
    (re.compile(r"(://[^:/@\s]*:)(?!\*+@)([^@\s/]+)(?=@)"), ("://",)),
    # key=value / "key": "value" pairs whose key names a secret.
    (
        re.compile(
            r"(?i)((?:password|passwd|secret|token|access_token|refresh_token|oauth_token"
            r"|oauth_token_secret|authorization|api[_-]?key|cookie|mfa[_-]?code"
            r"|ticket|lease[_-]?id)"
            r"[\"']?\s*[:=]\s*[\"']?)([^\"'\s,;&}]+)"
        ),
        (
            "passw",
            "secret",
            "token",
            "authorization",
            "api",
            "cookie",
            "mfa",
            "ticket",
            "lease_id",
            "lease-id",
            "leaseid",
        ),
    ),
    # Long opaque strings (JWTs, base64 blobs, hex keys) anywhere in a line.
    (re.compile(r"()\b(eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9._-]{10,})"), ("eyj",)),
    (re.compile(r"()([A-Za-z0-9+/_-]{40,}={0,2})"), ()),
]


# Every pattern above needs one of these words, or a run of 24+ characters (the shortest JWT
# match; the opaque run needs 40): a shorter text without them cannot match, and is returned
# after one search instead of five substitutions (most log lines, every access-log field).
_SHORT = 24
_HINTS = re.compile(
    r"(?i)passw|secret|token|authorization|api[_-]?key|cookie|mfa|bearer|basic|ticket"
    r"|lease[_-]?id|://[^@\s]*@"
)


def _folded(text: str) -> str:
    """`text` as the patterns' needles are looked for in it: case-folded, and with the one
    letter IGNORECASE matches that case-folding keeps apart (dotless i, for "i")."""
    return text.casefold().replace("\u0131", "i")


def redact(text: str) -> str:
    if len(text) < _SHORT and _HINTS.search(text) is None:
        return text
    folded = _folded(text)
    for pattern, needles in _SECRET_PATTERNS:
        # A substitution only takes text out: no later pattern's needle appears by it.
        if needles and not any(needle in folded for needle in needles):
            continue
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


class RedactingFilter(logging.Filter):
    """Masks secrets in the rendered message and in string extras."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        # A call whose arguments do not fit its format: logging's own handling would print
        # the arguments (a secret, maybe) with a traceback, and this filter runs before it,
        # in the caller's code. Keep the format and the failure's type, never the values.
        except Exception as exc:  # noqa: BLE001
            message = f"unformattable log call ({type(exc).__name__}): {record.msg!s}"
        record.msg = redact(message)
        record.args = None
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if isinstance(value, str):
                setattr(record, name, redact(value))
        return True


class JsonFormatter(logging.Formatter):
    """time, level, logger, message and the context fields, as one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, default=str)


def configure_logging(level: str | int = "INFO") -> None:
    """JSON lines on stderr at `level` (the service's GARMIN_AUTH_LOG_LEVEL); third-party
    loggers that could write secrets stay at WARNING whatever the level, and gRPC's lines
    about undecodable metadata lose the value (quiet_third_party_loggers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    quiet_third_party_loggers()
    # Python writes warnings and a thread's uncaught exception straight to stderr, past the
    # redaction: an exception's message may hold what a library was given (a URL with its
    # password, a token). Both go through the logs instead.
    logging.captureWarnings(True)
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if issubclass(args.exc_type, SystemExit):
        return  # as Python's own hook: a thread that exits says nothing
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("uncaught").error(
        "uncaught exception in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
    )


# Third-party loggers that, below WARNING, write what must never be logged (urllib3: full URLs
# with SSO tickets; oauthlib / requests_oauthlib: OAuth parameters and signatures) or only
# noise (alembic's plugin list). They stay at WARNING even when an operator asks for DEBUG.
THIRD_PARTY_LOG_LEVELS = {
    "urllib3": logging.WARNING,
    "oauthlib": logging.WARNING,
    "requests_oauthlib": logging.WARNING,
    "alembic": logging.WARNING,
}

# gRPC's Cython layer decodes every metadata value as UTF-8; one that is not is logged at ERROR
# on this logger ("Invalid encoding on %s") with its raw bytes and a traceback, before any of
# our code sees the call. The value may be a caller's whole bearer token (one byte mangled in
# transit), so such records keep only a fixed line. (The call itself is answered as usual:
# the interceptor refuses the credential.)
GRPC_CYTHON_LOGGER = "grpc._cython.cygrpc"
UNDECODABLE_METADATA_MESSAGE = "a request carried metadata that is not UTF-8 (value not logged)"


class UndecodableMetadataFilter(logging.Filter):
    """Rewrites gRPC's "Invalid encoding" records to one WARNING line without the value."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("Invalid encoding"):
            record.msg = UNDECODABLE_METADATA_MESSAGE
            record.args = None
            # The traceback's exception names only a position, but it is no use to an
            # operator, and a line without it cannot carry anything else either.
            record.exc_info = None
            record.exc_text = None
            record.stack_info = None
            # Nothing failed on our side: the client sent a header it should not have.
            record.levelno = logging.WARNING
            record.levelname = logging.getLevelName(logging.WARNING)
            # Logged at ERROR, it passed the level check; as a WARNING it must pass it too.
            return logging.getLogger(record.name).isEnabledFor(logging.WARNING)
        return True


def quiet_third_party_loggers() -> None:
    """Pin THIRD_PARTY_LOG_LEVELS, and keep metadata values out of gRPC's lines."""
    for name, level in THIRD_PARTY_LOG_LEVELS.items():
        logging.getLogger(name).setLevel(level)
    grpc_cython = logging.getLogger(GRPC_CYTHON_LOGGER)
    # A logger's filters see the records logged on it, before any handler: one is enough,
    # however often this runs (every test calls it).
    if not any(isinstance(f, UndecodableMetadataFilter) for f in grpc_cython.filters):
        grpc_cython.addFilter(UndecodableMetadataFilter())
