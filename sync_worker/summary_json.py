"""The text of a stored activity summary: ``json.dumps(value, sort_keys=True, indent=2,
ensure_ascii=False)``, byte for byte, without the cost of that call.

With ``indent`` set, the standard library (before Python 3.13) encodes in pure Python, one
generator per container: about 18 us for a Garmin summary, against 12 us here (the C
encoder alone, unindented, takes 9), 20 times per user. Summaries are what ``json`` parsed
from Garmin's answer (dicts with string keys, lists, strings, numbers, true, false, null), so
this writes those directly and leaves anything else (other key or value types, NaN and
infinities) to ``json.dumps`` itself, as it does a summary nested too deep for its three
frames per level (json.loads accepts almost 1000 levels; json.dumps takes one frame per
level). The files must stay byte-identical to what earlier versions wrote: an unchanged
summary is skipped, not rewritten. The directory sink asks for ``allow_nan=False``: NaN and
the infinities are no JSON (RFC 8259), and it writes them as null instead (sinks.py).
"""

from __future__ import annotations

import json
import math
from json.encoder import encode_basestring
from typing import Any, Final

_INDENT: Final = "  "
# Looked up for True, False and None only (1 == True as a dict key).
_LITERALS: Final = {None: "null", True: "true", False: "false"}


class _NotPlain(Exception):
    """A value this module leaves to json.dumps."""


def indented_json(value: Any, *, allow_nan: bool = True) -> str:
    """``json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=...)``:
    without `allow_nan`, a NaN or an infinity raises ValueError, as there."""
    try:
        return _encode(value, "\n")
    except (_NotPlain, RecursionError):
        return json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=allow_nan)


def _encode(value: Any, newline: str) -> str:
    """`value` as it appears after `newline` (a line break and the enclosing indentation)."""
    kind = type(value)
    if kind is dict:
        return _object(value, newline)
    if kind is list:
        return _array(value, newline)
    return _scalar(value)


def _object(value: dict[Any, Any], newline: str) -> str:
    if not value:
        return "{}"
    if not all(type(key) is str for key in value):
        raise _NotPlain
    inner = newline + _INDENT
    members = [
        f"{encode_basestring(key)}: {_encode(item, inner)}" for key, item in sorted(value.items())
    ]
    return "{" + inner + ("," + inner).join(members) + newline + "}"


def _array(value: list[Any], newline: str) -> str:
    if not value:
        return "[]"
    inner = newline + _INDENT
    items = [_encode(item, inner) for item in value]
    return "[" + inner + ("," + inner).join(items) + newline + "]"


def _scalar(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return encode_basestring(value)
    if kind is int:
        return int.__repr__(value)
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    if kind is bool or value is None:
        return _LITERALS[value]
    raise _NotPlain
