"""Bandwidth limits (``--limit-upload`` / ``--limit-download``): a shared byte-rate limiter
and a storage provider wrapper that charges it.

Every byte to or from a storage provider passes through ``Repository.providers``; when a
limit is set each provider there is a ``ThrottledProvider`` charging one ``RateLimiter``
per direction, shared by all providers and threads, so the limit is the process's total
(like restic's). Without a limit nothing is wrapped.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from enigma.interfaces import StorageProvider

#: The burst, as seconds of the rate: bytes that pass unpaced after an idle moment. A
#: little slack is needed: without it, time spent between two charges (a thread opening
#: the block it just read, a sleep that overshoots) would be lost for good and the
#: achieved rate would fall below the limit. 50 ms absorbs those gaps, yet adds at most
#: 50 ms worth of bytes to any transfer: 1 % of a 5 s one.
BURST_SECONDS = 0.05
#: Streamed reads (``get_stream``, the source of ``put_stream``) are charged per block of
#: at most this size, so a large object is paced as it flows rather than delayed up front.
STREAM_BLOCK = 64 * 1024


class RateLimiter:
    """A token bucket for bytes that blocks the caller, shared by any number of threads.

    Hand-written: ``limits`` only answers yes or no without waiting, and
    ``pyrate-limiter`` stores one list entry per unit of weight (a megabyte charged would be
    a million entries); neither paces a byte stream. The bucket may go into debt: a charge
    larger than what is available (a whole 4 MiB chunk) is taken at once and its caller
    sleeps, outside the lock, until the debt is repaid. Later callers queue behind that debt,
    so waiting threads are served in the order they charged.
    """

    def __init__(self, rate: float, burst: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not rate > 0:
            raise ValueError(f"a rate limit must be positive, got {rate!r}")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else self.rate * BURST_SECONDS)
        if self.burst < 0:
            raise ValueError(f"a burst must be >= 0, got {burst!r}")
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._stamp = clock()

    def take(self, n: int) -> float:
        """Charge ``n`` bytes; block until the rate allows them; return the seconds waited."""
        if n <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= n
            wait = -self._tokens / self.rate
        if wait <= 0:
            return 0.0
        self._sleep(wait)
        return wait


class ThrottledReader(io.RawIOBase):
    """A stream whose reads are charged to a limiter block by block (after each read)."""

    def __init__(self, inner: BinaryIO, limiter: RateLimiter, *, owned: bool) -> None:
        self._inner = inner
        self._limiter = limiter
        #: Close ``inner`` with this stream (a ``get_stream``), or leave that to its owner
        #: (the caller's stream given to ``put_stream``).
        self._owned = owned

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")[:STREAM_BLOCK]
        readinto = getattr(self._inner, "readinto", None)
        if readinto is not None:
            n = readinto(view) or 0
        else:
            data = self._inner.read(len(view))
            n = len(data)
            view[:n] = data
        self._limiter.take(n)
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                if self._owned:
                    self._inner.close()
            finally:
                super().close()


def throttled_stream(inner: BinaryIO, limiter: RateLimiter, *, owned: bool) -> BinaryIO:
    """``inner`` as a buffered file object (``read(n)`` returns n bytes unless at the end)
    whose bytes are charged to ``limiter`` as they are read."""
    raw = ThrottledReader(inner, limiter, owned=owned)
    return io.BufferedReader(raw, STREAM_BLOCK)  # type: ignore[return-value]


def _size(data: bytes | memoryview) -> int:
    return data.nbytes if isinstance(data, memoryview) else len(data)


class ThrottledProvider(StorageProvider):
    """A storage provider whose transfers are charged to shared limiters.

    Uploads (``put``, ``put_stream``) are charged before the bytes go out; whole reads
    (``get``, ``get_range``) after they arrived, since their size is known only then; a
    ``get_stream`` is charged per block as the caller reads. Everything else, and any
    attribute a plugin adds (``shared``, ``root``, ...), passes through to the provider.
    """

    def __init__(self, inner: StorageProvider, *, upload: RateLimiter | None = None,
                 download: RateLimiter | None = None) -> None:
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_upload", upload)
        object.__setattr__(self, "_download", download)

    # -- pass-through ----------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        if name == "_inner":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, value)

    def __repr__(self) -> str:
        return f"ThrottledProvider({self._inner!r})"

    @property
    def wrapped(self) -> StorageProvider:
        """The wrapped provider."""
        return self._inner

    # The base class defines these, so __getattr__ would never be asked for them.
    label = property(lambda self: self._inner.label)  # type: ignore[assignment]
    upload_concurrency = property(  # type: ignore[assignment]
        lambda self: self._inner.upload_concurrency)

    def delete(self, key: str) -> None:
        self._inner.delete(key)

    def exists(self, key: str) -> bool:
        return self._inner.exists(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self._inner.list(prefix)

    def sync(self) -> None:
        self._inner.sync()

    def check(self) -> None:
        self._inner.check()

    def create_bucket(self) -> bool:
        return self._inner.create_bucket()

    def close(self) -> None:
        self._inner.close()

    # -- charged ---------------------------------------------------------------------------

    def put(self, key: str, data: bytes | memoryview) -> None:
        if self._upload is not None:
            self._upload.take(_size(data))
        self._inner.put(key, data)

    def put_stream(self, key: str, stream: BinaryIO) -> None:
        if self._upload is not None:
            stream = throttled_stream(stream, self._upload, owned=False)
        self._inner.put_stream(key, stream)

    def get(self, key: str) -> bytes:
        data = self._inner.get(key)
        if self._download is not None:
            self._download.take(len(data))
        return data

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        data = self._inner.get_range(key, offset, length)
        if self._download is not None:
            self._download.take(len(data))
        return data

    def get_stream(self, key: str) -> BinaryIO:
        stream = self._inner.get_stream(key)
        if self._download is None:
            return stream
        return throttled_stream(stream, self._download, owned=True)
