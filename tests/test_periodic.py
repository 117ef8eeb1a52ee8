"""``Periodic``: housekeeping that survives its own failures and stops when told."""

from __future__ import annotations

import threading
import time

from enigma.periodic import Periodic


def test_a_failing_round_is_logged_and_the_next_one_runs(caplog) -> None:
    calls: list[float] = []
    third = threading.Event()

    def action() -> None:
        calls.append(time.monotonic())
        if len(calls) >= 3:
            third.set()
        if len(calls) == 1:
            raise RuntimeError("disk on fire")

    periodic = Periodic("test chore", 0.01, action, at_start=True).start()
    assert third.wait(5), "the chore stopped after its first failure"
    assert periodic.stop() is True
    count = len(calls)
    time.sleep(0.05)
    assert len(calls) == count, "it ran after stop"
    assert "test chore failed: disk on fire" in caplog.text


def test_not_at_start_waits_one_interval_and_zero_never_runs() -> None:
    calls: list[int] = []
    waiting = Periodic("later", 5.0, lambda: calls.append(1)).start()
    assert waiting.stop() is True and calls == []  # stopped before its first round
    disabled = Periodic("off", 0, lambda: calls.append(1)).start()
    assert disabled.stop() is False and calls == []
