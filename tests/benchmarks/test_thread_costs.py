"""benchmarks.thread_costs reads every thread's CPU and context switches from /proc."""

from __future__ import annotations

import os
import threading
import time

from benchmarks.thread_costs import read_threads, thread_groups


def test_a_busy_thread_shows_its_cpu_and_a_sleeping_one_its_switches() -> None:
    ready = threading.Event()
    done = threading.Event()
    ids: dict[str, int] = {}

    def busy() -> None:
        ids["busy"] = threading.get_native_id()
        ready.set()
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
        done.wait()

    def sleeper() -> None:
        ids["sleeper"] = threading.get_native_id()
        for _ in range(50):
            time.sleep(0.001)
        done.wait()

    threads = [
        threading.Thread(target=busy, name="costs-busy_1"),
        threading.Thread(target=sleeper, name="costs-sleeper"),
    ]
    before = read_threads(os.getpid())
    for thread in threads:
        thread.start()
    ready.wait()
    time.sleep(0.5)
    after = read_threads(os.getpid())
    groups = thread_groups(os.getpid())
    done.set()
    for thread in threads:
        thread.join()
    assert after[ids["busy"]].cpu >= 0.2
    assert ids["sleeper"] not in before
    assert after[ids["sleeper"]].voluntary >= 40
    assert after[ids["sleeper"]].cpu < after[ids["busy"]].cpu
    # Pool threads' numbers are dropped, so a pool is one group.
    assert groups[ids["busy"]] in {"costs-busy_N", "python"}
