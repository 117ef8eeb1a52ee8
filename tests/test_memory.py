"""``limit_malloc_arenas``: set on glibc, left alone when the user chose a value."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from enigma.memory import limit_malloc_arenas

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="mallopt(M_ARENA_MAX) is glibc's")
def test_sets_the_arena_limit_on_glibc() -> None:
    code = "from enigma.memory import limit_malloc_arenas as f; print(f())"
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "True"


def test_respects_malloc_arena_max(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False


def test_not_on_other_platforms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert limit_malloc_arenas() is False


def test_releaser_is_rate_limited_and_runs_in_the_background() -> None:
    import threading

    from enigma.memory import FreeMemoryReleaser

    calls: list[int] = []
    twice = threading.Event()

    def fake_trim(pad: int) -> int:
        calls.append(pad)
        if len(calls) >= 2:
            twice.set()
        return 1

    releaser = FreeMemoryReleaser(interval=0.0)
    releaser._trim = fake_trim
    stop = releaser.run_every(0.01)
    try:
        assert twice.wait(10), "the background thread never trimmed"
    finally:
        stop()
    limited = FreeMemoryReleaser(interval=3600)
    limited._trim = fake_trim
    before = len(calls)
    assert limited.maybe_release() is True
    assert limited.maybe_release() is False  # within the interval: skipped
    assert len(calls) == before + 1
