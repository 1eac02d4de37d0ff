"""The rule for user ids, shared by the service (which stores them) and the worker (which
names a directory after each one)."""

from __future__ import annotations

import re
from typing import Final

# Applied with `fullmatch`: with `match`, "$" also matches before a trailing newline, which
# let "alice\n" pass as a user id.
USER_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._@:+-]{1,128}")
# "." and ".." fit the pattern but name the current and the parent directory wherever an id
# becomes a path (the worker's directory sink): no user may be called that (issue 14).
RESERVED_USER_IDS: Final = frozenset({".", ".."})
USER_ID_RULE: Final = "must be 1-128 characters of A-Z a-z 0-9 . _ - @ : +, and not . or .."


def is_user_id(value: str) -> bool:
    """Whether `value` follows the rule."""
    return USER_ID_PATTERN.fullmatch(value) is not None and value not in RESERVED_USER_IDS
