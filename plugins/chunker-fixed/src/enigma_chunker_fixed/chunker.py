"""Fixed-size chunks: every chunk is exactly ``size`` bytes except possibly the last.

Cut points depend only on offsets, so this is the cheapest chunker there is (no rolling
hash: the pipeline's cost is hashing and sealing), and it dedups data that repeats at the
same ``size``-aligned offsets: VM and disk images, database pages, block devices, copies
of the same file. An insert shifts every later chunk, though, and nothing after it
dedups; for ordinary files the built-in content-defined ``Cdc`` chunker is the better
default. ``size`` is part of the backup's recorded parameters: change it and the next
backup shares no chunks with earlier ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO

from enigma.errors import ConfigError
from enigma.interfaces import Chunker

__all__ = ["DEFAULT_SIZE", "MAX_SIZE", "MIN_SIZE", "FixedChunker"]

KiB = 1024
MiB = 1024 * KiB

#: Below this, per-chunk overhead (an object, a manifest row, a GCM tag) dominates.
MIN_SIZE = 4 * KiB
#: The core's limit on any chunk (it bounds decompression output).
MAX_SIZE = 64 * MiB
#: The same as the Cdc chunker's average, so switching keeps object counts comparable.
DEFAULT_SIZE = 4 * MiB


class FixedChunker(Chunker):
    """Cuts a stream every ``size`` bytes, reading into one reused buffer."""

    name = "fixed"
    description = "Fixed-size chunks (dedups identical data at aligned offsets)"

    def __init__(self, *, size: int = DEFAULT_SIZE) -> None:
        if not isinstance(size, int) or isinstance(size, bool):
            raise ConfigError(f"chunker option 'size' must be an integer number of bytes, "
                              f"got {size!r}")
        if not MIN_SIZE <= size <= MAX_SIZE:
            raise ConfigError(f"chunker option 'size' = {size} is out of range "
                              f"[{MIN_SIZE} (4 KiB), {MAX_SIZE} (64 MiB)]")
        self.size = size

    @property
    def params(self) -> dict[str, Any]:
        """The only thing that decides cut points; ``FixedChunker(**params)`` rebuilds it."""
        return {"size": self.size}

    @property
    def single_chunk_limit(self) -> int:
        """Anything up to ``size`` bytes is one chunk, so the core may skip the chunker."""
        return self.size

    def chunks(self, stream: BinaryIO) -> Iterator[memoryview]:
        """Yield ``size``-byte views of ``stream`` (the last may be shorter).

        Short reads (pipes, sockets, network file systems) are filled up, so cut points
        never depend on how the stream hands out its bytes. Every view points into the
        same buffer and is valid only until the next chunk is requested, as the
        ``Chunker`` contract allows: one allocation per call, not one per chunk.
        """
        buffer = bytearray(self.size)
        view = memoryview(buffer)
        readinto = getattr(stream, "readinto", None)
        while True:
            filled = 0
            while filled < self.size:
                if readinto is not None:
                    n = readinto(view[filled:])
                else:
                    data = stream.read(self.size - filled)
                    n = len(data) if data is not None else None
                    if n:
                        view[filled : filled + n] = data
                if n is None:
                    raise BlockingIOError("the fixed chunker needs a blocking stream")
                if n == 0:
                    break
                filled += n
            if filled:
                yield view[:filled]
            if filled < self.size:
                return

    def chunks_of(self, buffer: bytes | memoryview) -> Iterator[memoryview]:
        """Slice data already in memory: the views point into ``buffer`` (no copies)."""
        view = memoryview(buffer).cast("B")
        for start in range(0, len(view), self.size):
            yield view[start : start + self.size]

    def __repr__(self) -> str:
        return f"FixedChunker(size={self.size})"
