"""Process-wide memory settings for a multi-threaded pipeline on glibc.

glibc gives threads their own malloc arenas (up to 8 per core). The pipeline frees
multi-MiB chunk buffers on whichever thread finished with them, so freed memory piles up
in many arenas and RSS grows far past what is in use: the S3 gateway under 8 concurrent
64 MiB PUTs and GETs peaked at 618 MiB with the default and 328 MiB with 2 arenas, at
the same MB/s. (A fixed low mmap threshold saves more but halves PUT MB/s: every chunk
buffer then costs fresh zeroed pages.)
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from collections.abc import Callable
from typing import Any

#: mallopt(3) parameter number of M_ARENA_MAX.
M_ARENA_MAX = -8


def limit_malloc_arenas() -> bool:
    """One malloc arena per core (at least 2), unless ``MALLOC_ARENA_MAX`` says otherwise.

    Returns whether the limit was set (False off glibc, e.g. musl or macOS). Call it
    before the worker threads start: arenas already made are kept.
    """
    mallopt = _glibc("mallopt")
    if mallopt is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(mallopt(M_ARENA_MAX, max(2, os.cpu_count() or 2)))


class FreeMemoryReleaser:
    """Hands freed heap memory back to the kernel (glibc ``malloc_trim``), at most once
    per ``interval`` seconds.

    After a burst of multi-MiB chunk buffers the freed memory stays in malloc's arenas and
    keeps counting as RSS; a long-running server calls ``maybe_release`` when a large
    request ends, so its RSS follows what it holds rather than its worst moment so far.
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._next = 0.0
        self._trim = _glibc("malloc_trim")

    def run_every(self, seconds: float) -> Callable[[], None]:
        """Also release on a daemon thread every ``seconds`` (a server between bursts keeps
        its last burst's freed memory otherwise); returns the function that stops it."""
        from enigma.periodic import Periodic

        return Periodic("enigma-trim", seconds, self.maybe_release).start().stop

    def maybe_release(self) -> bool:
        """Trim if the interval has passed; whether it did."""
        now = time.monotonic()
        if self._trim is None or now < self._next:
            return False
        self._next = now + self.interval
        self._trim(0)
        return True


def _glibc(name: str) -> Any:
    """glibc's function ``name``, or None off Linux/glibc (musl, macOS)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):
        return None
