"""A deep summary that carries a NaN (or a NUL, or a lone surrogate) is cleaned and stored.

The cleaning (sinks.storable, and the PostgreSQL sink's of NaN and infinities) recursed one
or more Python frames per level: a summary whose laps nest 600 deep (json.loads accepts
almost 1000 levels, and the C json.dumps of the first attempt writes it) with one NaN in it
raised RecursionError, and the user was FAILED on every run. The cleaning now copies without
recursion (sinks.mapped_leaves). Same
fixtures as tests/worker/test_sync_data.py::
test_nan_and_infinities_are_stored_as_null_by_the_postgres_sink.
"""

from __future__ import annotations

import math
from typing import Any

from garmin_emulator import GarminEmulator
from sync_worker.sinks import mapped_leaves
from tests.fixtures.servers import Replica
from tests.worker.conftest import sink_database, sink_url  # noqa: F401 (fixtures)
from tests.worker.test_sync_data import _sync_twice

DEPTH = 600


def test_a_deep_summary_with_a_nan_is_stored_by_the_postgres_sink(
    service: Replica,
    garmin: GarminEmulator,
    sink_url: str,  # noqa: F811
) -> None:
    laps: Any = [math.nan]
    for _ in range(DEPTH):
        laps = [laps]

    outcomes = _sync_twice(service, garmin, {"laps": laps}, out_dir=None, sink_url=sink_url)

    assert outcomes == ["SYNCED", "NOTHING_NEW"]


def test_the_copy_keeps_order_and_applies_the_leaf_everywhere() -> None:
    deep: Any = "x\x00"
    for _ in range(5000):
        deep = {"k\x00": [deep]}
    copied = mapped_leaves(deep, lambda v: v.replace("\x00", "") if isinstance(v, str) else v)
    for _ in range(5000):
        assert list(copied) == ["k"]
        copied = copied["k"][0]
    assert copied == "x"
    ordered = mapped_leaves({"b": 1, "a": [2, {"c": 3.5}], "z": None}, lambda v: v)
    assert list(ordered) == ["b", "a", "z"]
    assert ordered == {"b": 1, "a": [2, {"c": 3.5}], "z": None}
