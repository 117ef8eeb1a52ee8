"""Progress of a long command (backup, restore, verify, check, gc, recover).

The core modules report into a ``Progress`` and never draw anything: the base class only
keeps the counts (thread-safe, cheap enough to call per file and per chunk), and
displays - a terminal bar, JSON lines - read ``snapshot()`` on their own schedule. A
command given no progress gets ``NO_PROGRESS``, whose methods do nothing.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ProgressSnapshot:
    """What a display shows at one moment. Totals are None while unknown."""

    operation: str
    files_done: int
    bytes_done: int
    files_total: int | None
    bytes_total: int | None
    current: str | None
    elapsed: float
    errors: int

    @property
    def bytes_per_second(self) -> float:
        return self.bytes_done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the average rate so far; None without a byte total or a rate."""
        rate = self.bytes_per_second
        if self.bytes_total is None or rate <= 0:
            return None
        return max(self.bytes_total - self.bytes_done, 0) / rate

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bytes_per_second": round(self.bytes_per_second, 1),
                "eta_seconds": (None if self.eta_seconds is None
                                else round(self.eta_seconds, 1))}


class Progress:
    """Counts reported by a running command; subclasses display them.

    Call order: ``begin`` once, then any of ``set_totals``, ``current_file``, ``advance``,
    ``error`` from any thread, then ``end`` once. Subclasses that draw override ``begin``
    and ``end`` (calling super) and read ``snapshot()``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._operation = ""
        self._started = time.monotonic()
        self._files_done = 0
        self._bytes_done = 0
        self._files_total: int | None = None
        self._bytes_total: int | None = None
        self._current: str | None = None
        self._errors = 0

    def begin(self, operation: str, *, files_total: int | None = None,
              bytes_total: int | None = None) -> None:
        with self._lock:
            self._operation = operation
            self._started = time.monotonic()
            self._files_total = files_total
            self._bytes_total = bytes_total

    def set_totals(self, *, files: int | None = None, bytes: int | None = None) -> None:
        """Totals learnt after the start (e.g. by a scan running beside a backup)."""
        with self._lock:
            if files is not None:
                self._files_total = files
            if bytes is not None:
                self._bytes_total = bytes

    def current_file(self, path: str | None) -> None:
        self._current = path  # one reference store: no lock needed

    def advance(self, *, files: int = 0, bytes: int = 0) -> None:
        with self._lock:
            self._files_done += files
            self._bytes_done += bytes

    def error(self, path: str | None = None, message: str = "") -> None:
        with self._lock:
            self._errors += 1

    def end(self, summary: dict[str, Any] | None = None) -> None:
        """The command finished (or failed); ``summary`` is its result as in ``--json``."""

    def snapshot(self) -> ProgressSnapshot:
        with self._lock:
            return ProgressSnapshot(
                operation=self._operation, files_done=self._files_done,
                bytes_done=self._bytes_done, files_total=self._files_total,
                bytes_total=self._bytes_total, current=self._current,
                elapsed=time.monotonic() - self._started, errors=self._errors)


class _NoProgress(Progress):
    """Does nothing at all: the default for library callers and tests."""

    def begin(self, operation: str, *, files_total: int | None = None,
              bytes_total: int | None = None) -> None:
        pass

    def set_totals(self, *, files: int | None = None, bytes: int | None = None) -> None:
        pass

    def current_file(self, path: str | None) -> None:
        pass

    def advance(self, *, files: int = 0, bytes: int = 0) -> None:
        pass

    def error(self, path: str | None = None, message: str = "") -> None:
        pass


NO_PROGRESS: Progress = _NoProgress()
