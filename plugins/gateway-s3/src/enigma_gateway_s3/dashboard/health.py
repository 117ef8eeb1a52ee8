"""Provider health for the providers page: one cheap live probe each, in parallel.

The probe is the provider's own ``check`` (what ``enigma status`` asks too: for most, one
HEAD or stat, no data read). A provider that does not answer within ``PROBE_SECONDS`` is shown
as such; its probe keeps running on its thread, and later page loads report that probe
instead of starting another, so a hung cloud cannot pile up threads.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

PROBE_SECONDS = 5.0


@dataclass
class Health:
    """One provider's row: identity, probe outcome, and usage from the manifest."""

    label: str
    type: str
    ok: bool
    detail: str  # "reachable", or the error in one line
    millis: float | None
    chunks: int = 0
    stored_bytes: int = 0


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _probe(provider: Any, done: Future[float]) -> None:
    start = time.perf_counter()
    try:
        provider.check()
    except BaseException as exc:
        done.set_exception(exc)
    else:
        done.set_result((time.perf_counter() - start) * 1000)


class Prober:
    """Runs the probes, each on a daemon thread (a hung one never holds up the server's
    exit); one in flight per provider at most."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inflight: dict[str, tuple[Future[float], float]] = {}

    def _start(self, label: str, provider: Any) -> tuple[Future[float], float]:
        with self._lock:
            running = self._inflight.get(label)
            if running is None or running[0].done():
                done: Future[float] = Future()
                threading.Thread(target=_probe, args=(provider, done), daemon=True,
                                 name=f"dashboard-probe-{label}").start()
                running = (done, time.monotonic())
                self._inflight[label] = running
            return running

    def check(self, providers: dict[str, Any], types: dict[str, str],
              usage: dict[str, tuple[int, int]]) -> list[Health]:
        """Probe every provider at once; each row waits at most ``PROBE_SECONDS``."""
        started = {label: self._start(label, p) for label, p in providers.items()}
        deadline = time.monotonic() + PROBE_SECONDS
        rows = []
        for label, (future, since) in started.items():
            chunks, stored = usage.get(label, (0, 0))
            try:
                millis = future.result(timeout=max(deadline - time.monotonic(), 0))
            except FutureTimeout:
                waited = time.monotonic() - since
                rows.append(Health(label, types.get(label, "?"), False,
                                   f"no answer after {waited:.0f}s", None, chunks, stored))
                continue
            except Exception as exc:  # the provider's own error, shown in one line
                rows.append(Health(label, types.get(label, "?"), False, _one_line(exc), None,
                                   chunks, stored))
                continue
            rows.append(Health(label, types.get(label, "?"), True, "reachable", millis, chunks,
                               stored))
        return rows
