"""Displays of a long command's ``Progress``: a terminal bar (rich) and JSON lines.

The core only counts (``enigma.progress``); what is shown, where and how often is decided
here, by ``open_progress``, the one thing the CLI calls:

- stdout and stderr both terminals, not quiet: a transient rich bar on stderr (files,
  bytes, MB/s, ETA, current file), redrawn by rich's own thread ~8 times a second, so the
  command's threads never wait for drawing;
- ``--json`` (backup, restore): restic's JSON lines, a ``status`` line on stdout about
  once a second (the first after a second, so quick runs print none) and an ``error`` line
  on stderr per error (as restic does: stdout stays status lines and the result); the
  command then prints its result as one ``summary`` line on stdout (``print_summary``).
  Schema: docs/json.md, "Progress events";
- otherwise nothing (``NO_PROGRESS``): piped output stays exactly as it was.

rich is imported only when a bar is drawn, keeping ``enigma --help`` fast.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

from enigma.progress import NO_PROGRESS, Progress, ProgressSnapshot

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

#: Seconds between JSON status lines (and before the first).
STATUS_INTERVAL = 1.0
#: Terminal redraws per second (rich's refresh thread).
REFRESH_PER_SECOND = 8
#: What "files" are for each command (the bar's label).
UNITS = {"verify": "chunks", "check": "chunks", "recover": "chunks", "repair": "chunks",
         "gc": "objects"}

#: One lock for every JSON line this process prints, so lines never interleave.
_OUTPUT_LOCK = threading.Lock()


def write_json_line(value: dict[str, Any], stream: IO[str] | None = None) -> None:
    """One JSON object on one line, written whole (one write, then flush) under the lock."""
    line = json.dumps(value, default=str, separators=(",", ":")) + "\n"
    out = stream if stream is not None else sys.stdout
    with _OUTPUT_LOCK:
        out.write(line)
        out.flush()


def print_summary(result: dict[str, Any], stream: IO[str] | None = None) -> None:
    """The command's final result as the last JSON line: ``message_type`` "summary" and
    the fields its ``--json`` output has always had."""
    write_json_line({"message_type": "summary", **result}, stream)


class _Display(Progress):
    """A progress that shows itself between ``begin`` and ``end``; ``close`` is ``end``
    for a command that failed before it could call it (safe to call twice)."""

    def __init__(self, operation: str) -> None:
        super().__init__()
        self._operation = operation  # the snapshot's, until ``begin`` names it again
        self._shown = False
        self._state_lock = threading.Lock()

    def begin(self, operation: str, *, files_total: int | None = None,
              bytes_total: int | None = None) -> None:
        super().begin(operation, files_total=files_total, bytes_total=bytes_total)
        with self._state_lock:
            if not self._shown:
                self._shown = True
                self._show()

    def end(self) -> None:
        with self._state_lock:
            if self._shown:
                self._shown = False
                self._hide()

    def close(self) -> None:
        self.end()

    def _show(self) -> None:
        raise NotImplementedError

    def _hide(self) -> None:
        raise NotImplementedError


# -- JSON lines ------------------------------------------------------------------------


def status_line(snap: ProgressSnapshot) -> dict[str, Any]:
    """restic's ``status`` message from a snapshot. Totals, percent and time left are null
    until known for good (a scan beside a backup still counting leaves them null)."""
    final = snap.totals_final
    fraction = snap.fraction_done if final else None
    eta = snap.eta_seconds if final else None
    return {
        "message_type": "status",
        "operation": snap.operation,
        "seconds_elapsed": int(snap.elapsed),
        "seconds_remaining": None if eta is None else int(eta + 0.5),
        "percent_done": None if fraction is None else round(fraction, 4),
        "total_files": snap.files_total if final else None,
        "files_done": snap.files_done,
        "total_bytes": snap.bytes_total if final else None,
        "bytes_done": snap.bytes_done,
        "bytes_per_second": round(snap.bytes_per_second, 1),
        "current_files": [snap.current] if snap.current else [],
        "error_count": snap.errors,
    }


class JsonLinesProgress(_Display):
    """Status lines (stdout) from a thread of its own, error lines (stderr) as errors
    happen. ``stream``/``error_stream`` default to the process's at the time of writing."""

    def __init__(self, operation: str, *, stream: IO[str] | None = None,
                 error_stream: IO[str] | None = None, interval: float = STATUS_INTERVAL,
                 status: bool = True) -> None:
        super().__init__(operation)
        self._stream = stream
        self._error_stream = error_stream
        self._interval = interval
        self._status = status
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def error(self, path: str | None = None, message: str = "") -> None:
        super().error(path, message)
        operation = self.snapshot().operation
        self._write({"message_type": "error", "operation": operation,
                     "error": {"message": message}, "during": operation, "item": path},
                    self._error_stream if self._error_stream is not None else sys.stderr)

    def _show(self) -> None:
        if not self._status:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="enigma-progress",
                                        daemon=True)
        self._thread.start()

    def _hide(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._write(status_line(self.snapshot()), self._stream)

    @staticmethod
    def _write(value: dict[str, Any], stream: IO[str] | None) -> None:
        with contextlib.suppress(OSError, ValueError):  # a closed pipe must not kill a run
            write_json_line(value, stream)


# -- terminal ----------------------------------------------------------------------------


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    seconds = int(seconds + 0.5)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def stats_text(snap: ProgressSnapshot) -> str:
    """The figures beside the bar: "42% • 1,234/5,000 files • 1.2 GB/3.4 GB • 56.7 MB/s •
    ETA 0:00:42" (a total still being counted ends in "+"; unknown parts are left out)."""
    from rich.filesize import decimal

    more = "" if snap.totals_final else "+"
    unit = UNITS.get(snap.operation, "files")
    parts = []
    fraction = snap.fraction_done
    if fraction is not None and snap.totals_final:
        parts.append(f"{fraction * 100:3.0f}%")
    if snap.files_total is not None:
        parts.append(f"{snap.files_done:,}/{snap.files_total:,}{more} {unit}")
    else:
        parts.append(f"{snap.files_done:,} {unit}")
    if snap.bytes_total:
        parts.append(f"{decimal(snap.bytes_done)}/{decimal(snap.bytes_total)}{more}")
    elif snap.bytes_done:
        parts.append(decimal(snap.bytes_done))
    if snap.bytes_done:
        parts.append(f"{decimal(int(snap.bytes_per_second))}/s")
    if snap.totals_final:
        parts.append(f"ETA {_clock(snap.eta_seconds)}")
    if snap.errors:
        parts.append(f"{snap.errors:,} error{'s' if snap.errors != 1 else ''}")
    return " • ".join(parts)


def shorten(text: str, width: int) -> str:
    """Keep a path's end, which names the file: "…/deep/dir/name.txt"."""
    if width <= 1:
        return ""
    return text if len(text) <= width else "…" + text[-(width - 1):]


class TerminalProgress(_Display):
    """A rich progress bar on stderr that vanishes when the command ends."""

    def __init__(self, operation: str, console: Console) -> None:
        super().__init__(operation)
        from rich.progress import BarColumn, TextColumn
        from rich.progress import Progress as RichProgress

        display = self

        class _Synced(RichProgress):
            """rich's Progress, brought up to date with ours on each redraw (on rich's
            refresh thread), so reporting never costs more than counting."""

            def get_renderable(self) -> RenderableType:
                if not display._ready:  # rich asks once while being built
                    return super().get_renderable()
                return display._renderable(super().get_renderable)

        self._ready = False
        self.console = console
        self._bar = _Synced(TextColumn("[bold]{task.description}"), BarColumn(),
                            TextColumn("{task.fields[stats]}"), console=console,
                            transient=True, refresh_per_second=REFRESH_PER_SECOND)
        self._task = self._bar.add_task(operation, total=None, stats="")
        self._ready = True

    def _renderable(self, base: Any) -> RenderableType:
        from rich.console import Group
        from rich.text import Text

        snap = self.snapshot()
        fraction = snap.fraction_done if snap.totals_final else None
        self._bar.update(self._task, description=snap.operation or self._operation,
                         total=None if fraction is None else 1.0,
                         completed=fraction or 0.0, stats=stats_text(snap))
        if not snap.current:
            return base()
        line = Text("  " + shorten(snap.current, self.console.width - 3), no_wrap=True,
                    style="dim")
        return Group(base(), line)

    def _show(self) -> None:
        self._bar.start()

    def _hide(self) -> None:
        self._bar.stop()


# -- choosing ----------------------------------------------------------------------------


def _terminal_console() -> Console | None:
    """A console on stderr when both stdout and stderr are terminals (not a dumb one)."""
    try:
        if not (sys.stdout.isatty() and sys.stderr.isatty()):
            return None
    except (AttributeError, ValueError):  # a replaced or closed stream
        return None
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal or console.is_dumb_terminal:
        return None
    return console


def choose_progress(operation: str, *, json_lines: bool = False,
                    quiet: bool = False) -> Progress:
    """The display for this run: JSON lines when asked for, a bar on a terminal, else none.
    With ``quiet`` JSON lines keep their errors but drop the status lines."""
    if json_lines:
        return JsonLinesProgress(operation, status=not quiet)
    if quiet:
        return NO_PROGRESS
    console = _terminal_console()
    return NO_PROGRESS if console is None else TerminalProgress(operation, console)


@contextlib.contextmanager
def open_progress(operation: str, *, json_lines: bool = False,
                  quiet: bool = False) -> Iterator[Progress]:
    """``with open_progress("backup", json_lines=as_json, quiet=q) as progress:`` pass
    ``progress=progress`` to the command; its display is stopped on the way out, also
    when the command raised."""
    progress = choose_progress(operation, json_lines=json_lines, quiet=quiet)
    try:
        yield progress
    finally:
        close = getattr(progress, "close", None)
        if close is not None:
            close()
