"""Stream helpers shared by storage plugins."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from enigma.errors import TransientStorageError

#: Default size of one ranged read: big enough for throughput, small enough for memory.
RANGE_READ_SIZE = 4 * 1024 * 1024


class RangeReader(io.RawIOBase):
    """An object read in ranges on demand, so memory stays at one range whatever its size.

    ``fetch(offset, length)`` returns up to ``length`` bytes; a provider pins it to one
    version of the object (ETag, generation) so an overwrite mid-read fails instead of
    mixing versions.
    """

    def __init__(self, size: int, fetch: Callable[[int, int], bytes],
                 block: int = RANGE_READ_SIZE) -> None:
        self._size = size
        self._pos = 0
        self._fetch = fetch
        self._block = block

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), self._size - self._pos, self._block)
        if n <= 0:
            return 0
        data = self._fetch(self._pos, n)
        if not data:
            raise TransientStorageError("object shrank while it was being read")
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)


def range_stream(size: int, fetch: Callable[[int, int], bytes],
                 block: int = RANGE_READ_SIZE) -> io.BufferedReader:
    """A buffered file object over ``RangeReader``: what ``get_stream`` returns."""
    return io.BufferedReader(RangeReader(size, fetch, block), block)
