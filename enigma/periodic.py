"""``Periodic``: a server's housekeeping on a daemon thread (trim memory, expire uploads,
store manifest snapshots), which must neither die on one failure nor outlive ``stop``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("enigma")


class Periodic:
    """Calls ``action`` every ``interval`` seconds (not at all when ``interval <= 0``).

    An exception is logged and the next round runs as planned. ``at_start`` runs the first
    round at once instead of after one interval.
    """

    def __init__(self, name: str, interval: float, action: Callable[[], object], *,
                 at_start: bool = False) -> None:
        self.name = name
        self.interval = interval
        self.action = action
        self.at_start = at_start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Periodic:
        if self.interval > 0:
            self._thread.start()
        return self

    def _run(self) -> None:
        if not self.at_start and self._stop.wait(self.interval):
            return
        while True:
            try:
                self.action()
            except Exception as exc:
                log.error("%s failed: %s", self.name, exc)
            if self._stop.wait(self.interval):
                return

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop and wait up to ``timeout`` for a round in progress; whether it was started."""
        self._stop.set()
        if not self._thread.is_alive():
            return self._thread.ident is not None
        self._thread.join(timeout=timeout)
        return True
