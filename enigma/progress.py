"""Progress of a long command (backup, restore, verify, check, gc, recover).

The core modules report into a ``Progress`` and never draw anything: the base class only
keeps the counts (thread-safe, cheap enough to call per file and per chunk), and
displays - a terminal bar, JSON lines - read ``snapshot()`` on their own schedule. A
command given no progress gets ``NO_PROGRESS``, whose methods do nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


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
    #: False while a scan running beside the command is still adding to the totals.
    totals_final: bool = True

    @property
    def bytes_per_second(self) -> float:
        return self.bytes_done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def fraction_done(self) -> float | None:
        """0..1 by bytes when a byte total is known (and not 0), else by files; None
        without totals. Work that grew past its total counts as done, never above 1."""
        if self.bytes_total:
            return min(self.bytes_done / self.bytes_total, 1.0)
        if self.files_total:
            return min(self.files_done / self.files_total, 1.0)
        if self.files_total == 0 and not self.bytes_total:
            return 1.0  # nothing to do at all
        return None

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the average rate so far, on the measure ``fraction_done`` uses
        (bytes, else files); None without totals or before any progress."""
        fraction = self.fraction_done
        if fraction is None or fraction <= 0 or self.elapsed <= 0:
            return None
        return self.elapsed * (1 - fraction) / fraction


class Progress:
    """Counts reported by a running command; subclasses display them.

    ``wants_totals`` tells the command whether counting its totals beforehand (or on a
    scanner thread beside it) is worth the work: only for something that shows them.

    Call order: ``begin`` once, then any of ``set_totals``, ``current_file``, ``advance``,
    ``error`` from any thread, then ``end`` once. Subclasses that draw override ``begin``
    and ``end`` (calling super) and read ``snapshot()``.
    """

    wants_totals = True

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
        self._totals_final = True

    def begin(self, operation: str, *, files_total: int | None = None,
              bytes_total: int | None = None) -> None:
        with self._lock:
            self._operation = operation
            self._started = time.monotonic()
            self._files_total = files_total
            self._bytes_total = bytes_total
            self._totals_final = True

    def set_totals(self, *, files: int | None = None, bytes: int | None = None,
                   final: bool = True) -> None:
        """Totals learnt after the start (e.g. by a scan running beside a backup);
        ``final=False`` while that scan is still counting."""
        with self._lock:
            if files is not None:
                self._files_total = files
            if bytes is not None:
                self._bytes_total = bytes
            self._totals_final = final

    def current_file(self, path: str | None) -> None:
        self._current = path  # one reference store: no lock needed

    def advance(self, *, files: int = 0, bytes: int = 0) -> None:
        with self._lock:
            self._files_done += files
            self._bytes_done += bytes

    def error(self, path: str | None = None, message: str = "") -> None:
        with self._lock:
            self._errors += 1

    def end(self) -> None:
        """The command finished (or failed)."""

    @contextmanager
    def running(self, operation: str, *, files_total: int | None = None,
                bytes_total: int | None = None) -> Iterator[Progress]:
        """``begin`` now and ``end`` when the block is left, however it is left."""
        self.begin(operation, files_total=files_total, bytes_total=bytes_total)
        try:
            yield self
        finally:
            self.end()

    def snapshot(self) -> ProgressSnapshot:
        with self._lock:
            return ProgressSnapshot(
                operation=self._operation, files_done=self._files_done,
                bytes_done=self._bytes_done, files_total=self._files_total,
                bytes_total=self._bytes_total, current=self._current,
                elapsed=time.monotonic() - self._started, errors=self._errors,
                totals_final=self._totals_final)


class _NoProgress(Progress):
    """Does nothing at all: the default for library callers and tests."""

    wants_totals = False

    def begin(self, operation: str, *, files_total: int | None = None,
              bytes_total: int | None = None) -> None:
        pass

    def set_totals(self, *, files: int | None = None, bytes: int | None = None,
                   final: bool = True) -> None:
        pass

    def current_file(self, path: str | None) -> None:
        pass

    def advance(self, *, files: int = 0, bytes: int = 0) -> None:
        pass

    def error(self, path: str | None = None, message: str = "") -> None:
        pass


NO_PROGRESS: Progress = _NoProgress()


class TotalsScanner:
    """Counts a command's totals on a thread beside it, like restic's scanner: the command
    starts at once instead of waiting for a full count, and the display learns the totals
    as they grow (``final=False``) and when the count is done.

    ``sizes`` yields one size per item (file) to count; it runs on the scanner thread, so
    it must not share unsynchronised state with the command. ``count_bytes=False`` counts
    items only (their sizes are not known: yield 0). Used as a context manager around the
    command, or ``start``/``stop``; does nothing for a progress that shows no totals.
    """

    #: Totals are published at most this often while counting.
    PUBLISH_SECONDS = 0.25

    def __init__(self, progress: Progress, sizes: Callable[[], Iterable[int]], *,
                 count_bytes: bool = True) -> None:
        self.progress = progress
        self._sizes = sizes
        self._count_bytes = count_bytes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.finished = False

    def __enter__(self) -> TotalsScanner:
        return self.start()

    def start(self) -> TotalsScanner:
        if self.progress.wants_totals and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="enigma-scan", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Ask the scan to stop and wait briefly: a scan stuck in a slow directory listing
        is a daemon thread and must not hold up the command's end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        files = total = 0
        last = time.monotonic()
        try:
            for size in self._sizes():
                if self._stop.is_set():
                    return
                files += 1
                total += size
                if files % 128 == 0 and time.monotonic() - last >= self.PUBLISH_SECONDS:
                    self._publish(files, total, final=False)
                    last = time.monotonic()
        except Exception:  # totals are a nicety: a scan that fails leaves them unfinished
            return
        if not self._stop.is_set():
            self._publish(files, total, final=True)
            self.finished = True

    def _publish(self, files: int, total: int, *, final: bool) -> None:
        self.progress.set_totals(files=files, bytes=total if self._count_bytes else None,
                                 final=final)
