"""benchmarks/cpu_pinning.py: `--pin-cpus` confines every thread of a running server to one
CPU, those it starts afterwards included, and refuses CPUs this process cannot use."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from benchmarks.cpu_pinning import confine, cpu_list

# A process with two threads already running; on a line from stdin it starts a third, then
# prints the CPUs each of the three may run on (sched_getaffinity(0): the calling thread's).
CHILD = """
import json, os, sys, threading
seen = {}
release = threading.Event()
def note(name):
    release.wait()
    seen[name] = sorted(os.sched_getaffinity(0))
early = [threading.Thread(target=note, args=(f"early-{i}",)) for i in range(2)]
for thread in early:
    thread.start()
print("ready", flush=True)
sys.stdin.readline()
late = threading.Thread(target=note, args=("late",))
late.start()
release.set()
for thread in [*early, late]:
    thread.join()
print(json.dumps(seen), flush=True)
"""


def test_cpu_list_takes_usable_cpus_and_refuses_others() -> None:
    allowed = sorted(os.sched_getaffinity(0))

    assert cpu_list(",".join(map(str, allowed))) == tuple(allowed)
    with pytest.raises(argparse.ArgumentTypeError, match="must be among"):
        cpu_list(str(max(allowed) + 1))
    with pytest.raises(argparse.ArgumentTypeError, match="not a list of CPU numbers"):
        cpu_list("first")


def test_every_thread_of_the_process_and_the_ones_it_starts_later_are_confined() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("one usable CPU: every thread is confined to it already")
    target = allowed[-1]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdin is not None
        assert child.stdout.readline().strip() == "ready"

        confine(child.pid, target)
        child.stdin.write("go\n")
        child.stdin.flush()
        seen = json.loads(child.stdout.readline())
    finally:
        child.wait(10)

    assert seen == {"early-0": [target], "early-1": [target], "late": [target]}


def test_without_confining_the_threads_keep_every_cpu() -> None:
    """The child above, not confined: what the test before would see if confine() did
    nothing (so that test can fail)."""
    allowed = sorted(os.sched_getaffinity(0))
    child = subprocess.run(
        [sys.executable, "-c", CHILD],
        input="go\n",
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )

    seen = json.loads(child.stdout.splitlines()[-1])
    assert seen == {"early-0": allowed, "early-1": allowed, "late": allowed}
