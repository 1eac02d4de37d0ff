"""Settings from environment variables: one reader for the service (GARMIN_AUTH_*) and the
worker (GARMIN_SYNC_*), the one error a bad setting raises, and reading a secret from the
file a ``<NAME>_FILE`` variable names.

A blank variable counts as unset. Messages name the variable and what is wrong with it; they
quote a bad value only where it cannot be a secret (numbers, flags), never a required string.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Final

# A secret (a token, a key, a URL) takes a few hundred bytes; a file past this is the wrong
# one (/dev/zero, a log): refused before it fills the memory.
MAX_SECRET_FILE_BYTES: Final = 64 * 1024


class ConfigError(ValueError):
    """A setting (an environment variable or a command-line flag) is missing or malformed."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


class EnvReader:
    """Reads ``<prefix><NAME>`` variables and checks them."""

    def __init__(self, env: Mapping[str, str], prefix: str) -> None:
        self._env = env
        self.prefix = prefix

    def get(self, name: str) -> str | None:
        value = self._env.get(self.prefix + name)
        return value.strip() if value is not None and value.strip() else None

    def error(self, name: str, problem: str) -> ConfigError:
        """The ConfigError naming ``<prefix><NAME>``."""
        return ConfigError(self.prefix + name, problem)

    def required(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise self.error(name, "is required but not set")
        return value

    def number(self, name: str, default: float, *, minimum: float, maximum: float) -> float:
        value = self.get(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise self.error(name, f"expected a number, got {value!r}") from None
        if not minimum <= number <= maximum:
            raise self.error(name, f"must be between {minimum:g} and {maximum:g}")
        return number

    def integer(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        value = self.get(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise self.error(name, f"expected a whole number, got {value!r}") from None
        if not minimum <= number <= maximum:
            raise self.error(name, f"must be between {minimum} and {maximum}")
        return number

    def flag(self, name: str) -> bool:
        value = (self.get(name) or "false").lower()
        if value in {"1", "true", "yes", "on"}:
            return True
        if value in {"0", "false", "no", "off"}:
            return False
        raise self.error(name, f"expected true or false, got {value!r}")

    def path(self, name: str) -> Path | None:
        """A file that must exist and be readable, or None when unset."""
        value = self.get(name)
        if value is None:
            return None
        path = Path(value)
        try:
            is_file = path.is_file()
        except OSError as exc:
            # is_file() answers False only for a path that does not exist; it raises for one
            # the process cannot look at (EACCES: a directory it may not search) or that the
            # system refuses (ENAMETOOLONG): still a bad setting, not a crash.
            raise self.error(name, f"names no file this process can see ({exc.strerror})") from None
        if not is_file:
            raise self.error(name, "names no readable file")
        return path


def read_secret_file(variable: str, path: str) -> str:
    """The text of the file a ``<NAME>_FILE`` variable names, surrounding whitespace dropped
    (a mounted Secret often ends with a newline). A ConfigError naming `variable` when it
    cannot be read, is not a regular file or a pipe, is larger than MAX_SECRET_FILE_BYTES,
    is not UTF-8 or holds only whitespace; the content is never quoted."""
    try:
        data = _read_capped(path)
    except OSError as exc:
        raise ConfigError(variable, f"cannot read {path} ({exc.strerror})") from None
    if data is None:
        raise ConfigError(variable, f"{path} is not a regular file")
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise ConfigError(
            variable, f"{path} is larger than {MAX_SECRET_FILE_BYTES // 1024} KiB (no secret is)"
        )
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(variable, f"cannot read {path} (not UTF-8 text)") from None
    if not text:
        raise ConfigError(variable, f"{path} is empty")
    return text


def _read_capped(path: str) -> bytes | None:
    """At most MAX_SECRET_FILE_BYTES + 1 bytes of a regular file or a pipe (a shell's
    <(...)); None for anything else (a device, a directory). Opened without blocking: open()
    of a FIFO nobody writes to waits for a writer forever, and then reads as empty."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            return None
        # A pipe's writer may not have written yet: wait for it (until it closes the pipe).
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_SECRET_FILE_BYTES:
            chunk = os.read(fd, MAX_SECRET_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
