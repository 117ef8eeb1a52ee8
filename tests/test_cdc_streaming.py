"""``CdcChunker.chunks`` cuts a stream exactly where pyfastcdc cuts the whole buffer.

The stream cutter keeps only the chunk being cut in memory (pyfastcdc's ``cut_stream``
zero-fills 2 x max_size per stream), so its cut points must be checked against the
library's over every parameter shape and every way a stream can hand out its bytes.
"""

from __future__ import annotations

import io
import random
import time
import tracemalloc

import pytest

from enigma.plugins.cdc import CdcChunker

KiB = 1024
MiB = 1024 * KiB

PARAMS = [
    {},  # the defaults: 1 / 4 / 16 MiB
    {"avg_size": 4 * KiB},
    {"avg_size": 64 * KiB, "normalized_chunking": 2, "seed": 7},
    {"avg_size": 1 * MiB, "min_size": 256 * KiB, "max_size": 2 * MiB, "normalized_chunking": 0},
    {"avg_size": 256, "min_size": 64, "max_size": 1024, "normalized_chunking": 3},
]


class Trickle(io.RawIOBase):
    """A stream that returns short reads of random sizes, as a socket or pipe does."""

    def __init__(self, data: bytes, rng: random.Random, most: int) -> None:
        self.data, self.pos, self.rng, self.most = data, 0, rng, most

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        limit = len(self.data) if n < 0 else n
        take = min(limit, self.rng.randint(1, self.most))
        piece = self.data[self.pos:self.pos + take]
        self.pos += len(piece)
        return piece


@pytest.mark.parametrize("params", PARAMS, ids=lambda p: ",".join(f"{k}={v}" for k, v in
                                                                   p.items()) or "defaults")
def test_stream_cuts_equal_whole_buffer_cuts(params: dict[str, int]) -> None:
    chunker = CdcChunker(**params)
    fastcdc = chunker._fastcdc()
    rng = random.Random(len(params))
    sizes = [0, 1, 100, chunker.min_size, chunker.min_size + 1, chunker.avg_size,
             chunker.max_size, chunker.max_size + 1, 3 * chunker.max_size + 777,
             max(5 * chunker.avg_size, 2 * MiB)]
    for size in sizes:
        data = rng.randbytes(size)
        expected = [bytes(c.data) for c in fastcdc.cut_buf(data)]
        for most in (1 + size // 7, 3 * MiB):
            got = [bytes(c) for c in chunker.chunks(Trickle(data, rng, max(most, 1)))]
            assert got == expected, f"size {size}, reads up to {most}"
        assert b"".join(expected) == data


def test_repetitive_data_cuts_like_the_library() -> None:
    """Low-entropy data (long runs, repeats) exercises the forced max_size cuts."""
    chunker = CdcChunker(avg_size=16 * KiB)
    pattern = b"".join(bytes([i % 7]) * (i % 300) for i in range(5000))
    data = pattern * 8 + bytes(300 * KiB)
    expected = [bytes(c.data) for c in chunker._fastcdc().cut_buf(data)]
    assert [bytes(c) for c in chunker.chunks(io.BytesIO(data))] == expected


def test_small_stream_is_cheap() -> None:
    """A 4 KiB stream must not cost a 2 x max_size buffer (32 MiB, ~14 ms) as cut_stream's."""
    chunker = CdcChunker()
    data = random.Random(3).randbytes(4 * KiB)
    tracemalloc.start()
    try:
        started = time.perf_counter()
        for _ in range(50):
            assert [bytes(c) for c in chunker.chunks(io.BytesIO(data))] == [data]
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 * MiB, f"peak {peak} bytes for a 4 KiB stream"
    assert elapsed < 0.25, f"{elapsed * 20:.1f} ms per 4 KiB stream"


def test_memory_follows_the_chunk_not_max_size() -> None:
    chunker = CdcChunker(avg_size=64 * KiB)  # max 256 KiB
    data = random.Random(5).randbytes(8 * MiB)
    tracemalloc.start()
    try:
        total = sum(len(c) for c in chunker.chunks(io.BytesIO(data)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == len(data)
    # the chunk buffer (<= max_size + one 1 MiB read) plus the chunks of one cut
    assert peak < 4 * MiB, f"peak {peak} bytes"
