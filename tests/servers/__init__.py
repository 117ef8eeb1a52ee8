"""Real servers for tests, started on free loopback ports and stopped afterwards.

Each module wraps one kind of server as a context manager (``servers.s3.moto_server()``,
``servers.s3.seaweedfs_server()``, ...), so plugin tests and the multi-cloud end-to-end
tests share one way to start them. Heavy client libraries are imported inside functions:
importing this package costs nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["ServerProcess", "free_port", "log_tail", "wait_until"]


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's pick, on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 40) -> str:
    """The end of a server's log, for failure messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def wait_until(ready: Callable[[], bool], *, timeout: float, what: str,
               process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll ``ready`` until it is true; fail with the log's tail on timeout or early exit."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} while starting; "
                               f"log tail:\n{log_tail(log) if log else ''}")
        try:
            if ready():
                return
        except Exception:  # not up yet: connection refused, 503, ...
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f} s; log tail:\n"
                               f"{log_tail(log) if log else ''}")
        time.sleep(0.1)


class ServerProcess:
    """A server in its own process group, logging to a file; killed as a group."""

    def __init__(self, argv: Sequence[str], log: Path, *, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.argv = list(argv)
        self.log = log
        self.env = env
        self.cwd = cwd
        self.process: subprocess.Popen | None = None

    def start(self) -> subprocess.Popen:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=self.cwd,
                env={**os.environ, **(self.env or {})})
        return self.process

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole group at once: a crash, as far as clients can tell."""
        self._signal(signal.SIGKILL)
        self._reap(10)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the group, then SIGKILL whatever is left after ``grace`` seconds."""
        if not self.running:
            self._reap(0)
            return
        self._signal(signal.SIGTERM)
        if not self._reap(grace):
            self._signal(signal.SIGKILL)
            self._reap(10)

    def _signal(self, sig: int) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def _reap(self, timeout: float) -> bool:
        if self.process is None:
            return True
        try:
            self.process.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
