"""GARMIN_SYNC_AUTH_TOKEN_FILE naming something that is no secret file (a device, a FIFO
nobody writes to, a file far larger than any token) is a configuration error naming the
variable (exit 2), at once.

Before: sync_worker.config read the file with Path.read_text(): /dev/zero read until the
memory ran out, a FIFO without a writer blocked open() forever (a CronJob hung until its
deadline), and a multi-megabyte file (a log named by mistake) was sent as the bearer token.
Now garmin_client.env.read_secret_file reads at most 64 KiB + 1 byte of a regular file or a
pipe, opening without blocking."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from garmin_client.env import MAX_SECRET_FILE_BYTES, ConfigError, read_secret_file
from tests.worker.test_cli import main_in_process, one_line  # noqa: F401 (a fixture)

# A hang must fail the test, not the run.
pytestmark = pytest.mark.timeout(20)

VARIABLE = "GARMIN_SYNC_AUTH_TOKEN_FILE"


def refusal(main: Callable[..., tuple[int, str, str]], token_file: str, out: Path) -> str:
    code, _out, err = main(
        {VARIABLE: token_file, "GARMIN_SYNC_AUTH_TARGET": "127.0.0.1:1"},
        "run",
        "--all",
        "--out",
        str(out),
    )
    assert code == 2, err
    line = one_line(err)
    assert f"configuration error: {VARIABLE}: " in line
    return line


def test_dev_zero_is_refused_without_reading_it_all(
    main_in_process: Callable[..., tuple[int, str, str]],  # noqa: F811
    tmp_path: Path,
) -> None:
    assert "is not a regular file" in refusal(main_in_process, "/dev/zero", tmp_path)


def test_a_fifo_nobody_writes_to_is_empty_not_a_hang(
    main_in_process: Callable[..., tuple[int, str, str]],  # noqa: F811
    tmp_path: Path,
) -> None:
    fifo = tmp_path / "token-fifo"
    os.mkfifo(fifo)
    assert "is empty" in refusal(main_in_process, str(fifo), tmp_path / "out")


def test_a_file_larger_than_any_secret_is_refused(
    main_in_process: Callable[..., tuple[int, str, str]],  # noqa: F811
    tmp_path: Path,
) -> None:
    big = tmp_path / "app.log"
    big.write_bytes(b"x" * (MAX_SECRET_FILE_BYTES + 1))
    line = refusal(main_in_process, str(big), tmp_path / "out")
    assert "is larger than 64 KiB" in line
    assert "xxxx" not in line


def test_a_file_at_the_cap_is_read(tmp_path: Path) -> None:
    """The cap is on the file, whitespace included (a Secret's trailing newline)."""
    exact = tmp_path / "secret"
    exact.write_bytes(b"k" * (MAX_SECRET_FILE_BYTES - 1) + b"\n")
    assert read_secret_file(VARIABLE, str(exact)) == "k" * (MAX_SECRET_FILE_BYTES - 1)


def test_a_pipe_with_a_writer_is_read_to_its_end() -> None:
    """A shell's <(...) (a pipe, /dev/fd/N) still works, however slowly its writer writes."""
    read_end, write_end = os.pipe()
    os.write(write_end, b"worker-")

    def finish() -> None:
        threading.Event().wait(0.2)
        os.write(write_end, b"token\n")
        os.close(write_end)

    writer = threading.Thread(target=finish)
    writer.start()
    try:
        assert read_secret_file(VARIABLE, f"/dev/fd/{read_end}") == "worker-token"
    finally:
        writer.join(5)
        os.close(read_end)


def test_a_directory_is_not_a_secret_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a regular file") as raised:
        read_secret_file(VARIABLE, str(tmp_path))
    assert raised.value.variable == VARIABLE
