"""`--pin-cpus`: each server process confined to one CPU, as a container given one exclusive
CPU runs (Kubernetes' static CPU manager policy, a Guaranteed pod with `cpu: "1"`).

Why it matters: a CPython server's threads hand the GIL to one another several times per
RPC. Spread over CPUs, every hand-over wakes a thread on another CPU (a futex wake and an
inter-processor interrupt, costly in a virtual machine); confined to one CPU, the same
hand-overs are plain switches on that CPU, and the process never had more than one CPU's
worth of Python to run anyway. Our service and the floors are confined alike, so the ratios
between them stay a fair comparison; the callers and PostgreSQL are left where the kernel
puts them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path


def cpu_list(text: str) -> tuple[int, ...]:
    """CPUs this process may run on, given as "0" or "0,1" (argparse type)."""
    allowed = os.sched_getaffinity(0)
    try:
        cpus = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of CPU numbers: {text!r}") from None
    if any(cpu not in allowed for cpu in cpus):
        raise argparse.ArgumentTypeError(f"CPUs must be among {sorted(allowed)}")
    return cpus


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pin-cpus",
        type=cpu_list,
        metavar="LIST",
        help="confine each server process (the service, and in lease_throughput the floors "
        "alike) to one CPU: the i-th process of each kind to the i-th CPU of LIST (e.g. 0, or "
        "0,1 with --processes 2); callers, workers and PostgreSQL stay free",
    )


def confine(pid: int, cpu: int) -> None:
    """Every thread of process `pid` on `cpu`. Threads it starts later inherit their
    creator's CPU, so a server confined once it listens stays confined."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that has just ended
            os.sched_setaffinity(int(task.name), {cpu})


def confine_groups(groups: Iterable[Sequence[int]], cpus: Sequence[int] | None) -> str | None:
    """The i-th process of every group of pids on cpus[i % len(cpus)]; a line saying so
    (None when no CPUs were given: nothing is confined)."""
    if not cpus:
        return None
    for pids in groups:
        for index, pid in enumerate(pids):
            confine(pid, cpus[index % len(cpus)])
    return f"every server process confined to one CPU ({', '.join(map(str, cpus))})"
