"""``Faulty`` storage: a local directory whose reads and writes fail on purpose.

Enigma's promise under misbehaving backends ("a backup succeeds with correct data or stops
with a clear error; every corrupted read is detected; retries stay bounded") can only be
tested against a backend that misbehaves on cue. This one wraps ``LocalStorage`` and, per
operation, may raise a transient or a permanent error, stall, time out, hand back truncated
or bit-flipped bytes, or list a stale view.

Every decision is a keyed hash of (seed, operation, key, how many times that operation ran
on that key, fault), never a shared random stream: the same seed gives the same faults
whatever order the threads run in, and a retry of the same call is a fresh draw (so
transient faults do pass after a few tries, as real ones do).

Options (``[[providers]] type = "Faulty"``), each overridable by the JSON object in the
``ENIGMA_FAULTY`` environment variable so a test can change them between runs:

``path``             the directory (required)
``seed``             integer, default 0
``prefix``           only keys starting with it get faults (default ``"chunks/"``)
``put_error`` / ``put_permanent``   share of puts failing transiently / for good
``get_error`` / ``get_permanent``   the same for gets (whole, ranged, streamed)
``timeout``          share of calls that stall ``timeout_seconds`` then fail transiently
``delay``            every call sleeps up to this many seconds
``truncate`` / ``bitflip``          share of gets returning half the bytes / one bit flipped
``stale_list``       share of listings that miss the last ``stale_window`` puts and still
                     show the last ``stale_window`` deletions
``journal``          a file that gets one line per injected fault (tests count them)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any, BinaryIO

from enigma.errors import ConfigError, StorageError, TransientStorageError
from enigma.interfaces import StorageProvider
from enigma.plugins.local_storage import LocalStorage

ENV = "ENIGMA_FAULTY"
FRACTIONS = ("put_error", "put_permanent", "get_error", "get_permanent", "timeout",
             "truncate", "bitflip", "stale_list")


def _options(given: dict[str, Any]) -> dict[str, Any]:
    """Config options with the ``ENIGMA_FAULTY`` JSON laid over them."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return given
    try:
        override = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{ENV} is not a JSON object: {exc}") from None
    if not isinstance(override, dict):
        raise ConfigError(f"{ENV} must be a JSON object")
    return {**given, **override}


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(f"Faulty storage option '{name}' must be a number from 0 to 1, "
                          f"got {value!r}")
    return float(value)


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"Faulty storage option '{name}' must be seconds >= 0, "
                          f"got {value!r}")
    return float(value)


class FaultyStorage(StorageProvider):
    """A local directory with seeded, per-operation faults (for tests only)."""

    name = "Faulty"
    description = "Local directory that injects storage faults (tests only)"
    upload_concurrency = 4

    def __init__(self, *, path: str | None = None, seed: int = 0, prefix: str = "chunks/",
                 put_error: float = 0, put_permanent: float = 0, get_error: float = 0,
                 get_permanent: float = 0, timeout: float = 0, timeout_seconds: float = 0.2,
                 delay: float = 0, truncate: float = 0, bitflip: float = 0,
                 stale_list: float = 0, stale_window: int = 5,
                 journal: str | None = None) -> None:
        given = dict(path=path, seed=seed, prefix=prefix, put_error=put_error,
                     put_permanent=put_permanent, get_error=get_error,
                     get_permanent=get_permanent, timeout=timeout,
                     timeout_seconds=timeout_seconds, delay=delay, truncate=truncate,
                     bitflip=bitflip, stale_list=stale_list, stale_window=stale_window,
                     journal=journal)
        opts = _options(given)
        unknown = sorted(set(opts) - set(given))
        if unknown:
            raise ConfigError(f"{ENV}: unknown Faulty storage option '{unknown[0]}'")
        if not opts["path"] or not isinstance(opts["path"], str):
            raise ConfigError("Faulty storage needs 'path' (a directory)")
        if isinstance(opts["seed"], bool) or not isinstance(opts["seed"], int):
            raise ConfigError("Faulty storage option 'seed' must be an integer")
        if not isinstance(opts["prefix"], str):
            raise ConfigError("Faulty storage option 'prefix' must be a string")
        window = opts["stale_window"]
        if isinstance(window, bool) or not isinstance(window, int) or window < 0:
            raise ConfigError("Faulty storage option 'stale_window' must be an integer >= 0")
        self.inner = LocalStorage(path=opts["path"])
        self.seed = opts["seed"]
        self.prefix = opts["prefix"]
        self.rates = {name: _fraction(name, opts[name]) for name in FRACTIONS}
        self.timeout_seconds = _seconds("timeout_seconds", opts["timeout_seconds"])
        self.delay = _seconds("delay", opts["delay"])
        self.journal = opts["journal"]
        self._counts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._recent_puts: deque[str] = deque(maxlen=window)
        self._recent_deletes: deque[str] = deque(maxlen=window)

    def __repr__(self) -> str:
        return f"FaultyStorage(path={self.inner.root!r}, seed={self.seed})"

    # -- the dice --------------------------------------------------------------------------

    def _draw(self, op: str, key: str) -> int:
        """This call's number among calls of ``op`` on ``key`` (0, 1, ...)."""
        with self._lock:
            n = self._counts.get((op, key), 0)
            self._counts[(op, key)] = n + 1
        return n

    def _roll(self, op: str, key: str, n: int, fault: str) -> float:
        """A uniform number in [0, 1) fixed by the seed and the call."""
        digest = hashlib.blake2b(f"{self.seed}|{op}|{key}|{n}|{fault}".encode(),
                                 digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64

    def _hit(self, op: str, key: str, n: int, fault: str) -> bool:
        rate = self.rates.get(fault, 0.0)
        return rate > 0 and self._roll(op, key, n, fault) < rate

    def _note(self, fault: str, op: str, key: str) -> None:
        if self.journal:
            with self._lock, open(self.journal, "a", encoding="utf-8") as out:
                out.write(f"{fault} {op} {key}\n")

    def _before(self, op: str, key: str, kind: str) -> int:
        """Delays, timeouts and errors common to every call; returns the call number."""
        n = self._draw(op, key)
        if not key.startswith(self.prefix):
            return n
        if self.delay:
            time.sleep(self.delay * self._roll(op, key, n, "delay"))
        if self._hit(op, key, n, "timeout"):
            self._note("timeout", op, key)
            time.sleep(self.timeout_seconds)
            raise TransientStorageError(f"faulty storage: {op} {key} timed out after "
                                        f"{self.timeout_seconds:g} s")
        if self._hit(op, key, n, f"{kind}_permanent"):
            self._note("permanent", op, key)
            raise StorageError(f"faulty storage: {op} {key}: injected permanent failure")
        if self._hit(op, key, n, f"{kind}_error"):
            self._note("transient", op, key)
            raise TransientStorageError(f"faulty storage: {op} {key}: injected "
                                        "transient failure (503 slow down)")
        return n

    def _damage(self, op: str, key: str, n: int, data: bytes) -> bytes:
        """Maybe hand back a truncated or bit-flipped copy of what was read."""
        if not data or not key.startswith(self.prefix):
            return data
        if self._hit(op, key, n, "truncate"):
            self._note("truncate", op, key)
            return data[: len(data) // 2]
        if self._hit(op, key, n, "bitflip"):
            self._note("bitflip", op, key)
            at = int(self._roll(op, key, n, "where") * len(data))
            damaged = bytearray(data)
            damaged[at] ^= 1 << int(self._roll(op, key, n, "bit") * 8)
            return bytes(damaged)
        return data

    # -- StorageProvider -------------------------------------------------------------------

    def put(self, key: str, data: bytes | memoryview) -> None:
        self._before("put", key, "put")
        self.inner.put(key, data)
        with self._lock:
            self._recent_puts.append(key)

    def put_stream(self, key: str, stream: BinaryIO) -> None:
        self.put(key, stream.read())

    def get(self, key: str) -> bytes:
        n = self._before("get", key, "get")
        return self._damage("get", key, n, self.inner.get(key))

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        n = self._before("get_range", key, "get")
        return self._damage("get_range", key, n, self.inner.get_range(key, offset, length))

    def get_stream(self, key: str) -> BinaryIO:
        return io.BytesIO(self.get(key))

    def delete(self, key: str) -> None:
        self._before("delete", key, "put")
        self.inner.delete(key)
        with self._lock:
            self._recent_deletes.append(key)

    def exists(self, key: str) -> bool:
        self._before("exists", key, "get")
        return self.inner.exists(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        n = self._draw("list", prefix)
        keys = list(self.inner.list(prefix))
        faulted = prefix.startswith(self.prefix) or self.prefix.startswith(prefix)
        if faulted and self._hit("list", prefix, n, "stale_list"):
            self._note("stale", "list", prefix)
            with self._lock:
                hidden = set(self._recent_puts)
                ghosts = [k for k in self._recent_deletes if k.startswith(prefix)]
            keys = [k for k in keys if k not in hidden] + ghosts
        yield from dict.fromkeys(keys)

    def sync(self) -> None:
        self.inner.sync()

    def check(self) -> None:
        self.inner.check()

    def create_bucket(self) -> bool:
        return self.inner.create_bucket()

    def close(self) -> None:
        self.inner.close()
