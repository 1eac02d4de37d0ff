"""A CLI run in process (configure_logging) installs a thread exception hook and captures
warnings; the tests' log fixture puts both back. Before, every test after the first such run
had the service's hook instead of pytest's, so an exception escaping a thread in a later test
was logged and no longer reported by pytest (PytestUnhandledThreadExceptionWarning). The two
tests run in this order (pytest keeps a file's order)."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable

from garmin_client import logging_setup
from tests.worker.test_cli import main_in_process  # noqa: F401 (a fixture)


def test_1_a_worker_cli_run_in_process(
    main_in_process: Callable[..., tuple[int, str, str]],  # noqa: F811
) -> None:
    code, _out, _err = main_in_process({}, "run", "--user", "a", "--out", "x")
    assert code == 2
    assert threading.excepthook is logging_setup._log_uncaught_in_thread


def test_2_the_next_test_has_pytests_hooks_back() -> None:
    assert threading.excepthook is not logging_setup._log_uncaught_in_thread
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("still a warning", UserWarning, stacklevel=1)
    assert len(caught) == 1
