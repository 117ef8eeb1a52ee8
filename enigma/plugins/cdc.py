"""Content-defined chunking with FastCDC 2020 (pyfastcdc, Cython, releases the GIL).

Cut points depend on content, not offsets, so an insert early in a file changes only the
chunks around it and dedup survives. The cut points are a stable format: the same
parameters must give the same chunks forever (checked against the reference vectors in
``tests/test_cdc_vectors.py``), so ``params`` is recorded with each backup.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO

from enigma.errors import ConfigError
from enigma.interfaces import Chunker

__all__ = ["CHUNKERS", "CdcChunker"]

KiB = 1024
MiB = 1024 * KiB

# pyfastcdc's bounds (its masks table covers these sizes only).
AVG_RANGE = (256, 4 * MiB)
MIN_RANGE = (64, 1 * MiB)
MAX_RANGE = (1 * KiB, 16 * MiB)
#: Sizes when the config names none: restic's (512 KiB / 1 MiB / 8 MiB). Against the seed's
#: 1 / 4 / 16 MiB, the 1 GB benchmark's repository ends 11 % smaller (an edit inside a
#: large file re-stores ~1 MiB, not ~5), backups are no slower and peak RSS is ~20 MiB
#: lower; the extra objects (4x for large files) cost nothing that matters even on clouds
#: billed per request. ``enigma init`` writes the sizes into enigma.toml, so a repository
#: keeps its sizes (and its dedup) whatever later versions default to.
DEFAULT_MIN, DEFAULT_AVG, DEFAULT_MAX = 512 * KiB, 1 * MiB, 8 * MiB
#: One read from a stream: small enough not to double the chunk buffer in transit.
STREAM_READ = 1 * MiB
#: pyfastcdc converts the seed (and seed << 1) to uint64.
SEED_LIMIT = 1 << 63


def _int_option(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"chunker option '{name}' must be an integer, got {value!r}")
    return value


def _check_range(name: str, value: int, bounds: tuple[int, int]) -> None:
    low, high = bounds
    if not low <= value <= high:
        raise ConfigError(f"chunker option '{name}' = {value} is out of range [{low}, {high}]")


class CdcChunker(Chunker):
    """FastCDC 2020 over a stream; memory per stream is about one chunk, not ``max_size``."""

    name = "cdc"
    aliases = ("fastcdc",)
    description = "FastCDC 2020 content-defined chunking"

    def __init__(
        self,
        *,
        avg_size: int | None = None,
        min_size: int | None = None,
        max_size: int | None = None,
        target_size: int | None = None,
        normalized_chunking: int = 1,
        seed: int = 0,
    ) -> None:
        if avg_size is not None:
            avg_size = _int_option("avg_size", avg_size)
        if target_size is not None:  # the seed config's name for the average
            target_size = _int_option("target_size", target_size)
            if avg_size not in (None, target_size):
                raise ConfigError(
                    "chunker options 'avg_size' and 'target_size' are the same setting; give one"
                )
            avg_size = target_size
        if avg_size is None:
            avg_size = DEFAULT_AVG
            min_size = DEFAULT_MIN if min_size is None else min_size
            max_size = DEFAULT_MAX if max_size is None else max_size
        _check_range("avg_size", avg_size, AVG_RANGE)
        # pyfastcdc's defaults for an average given without its bounds.
        min_size = avg_size // 4 if min_size is None else _int_option("min_size", min_size)
        max_size = avg_size * 4 if max_size is None else _int_option("max_size", max_size)
        _check_range("min_size", min_size, MIN_RANGE)
        _check_range("max_size", max_size, MAX_RANGE)
        if min_size > avg_size:
            raise ConfigError(
                f"chunker option 'min_size' = {min_size} must not exceed avg_size {avg_size}"
            )
        if max_size < avg_size:
            raise ConfigError(
                f"chunker option 'max_size' = {max_size} must not be below avg_size {avg_size}"
            )
        normalized_chunking = _int_option("normalized_chunking", normalized_chunking)
        _check_range("normalized_chunking", normalized_chunking, (0, 3))
        seed = _int_option("seed", seed)
        _check_range("seed", seed, (0, SEED_LIMIT - 1))

        self.avg_size = avg_size
        self.min_size = min_size
        self.max_size = max_size
        self.normalized_chunking = normalized_chunking
        self.seed = seed
        self._fastcdc()  # fail now, at config time, not at the first backup

    def _fastcdc(self) -> Any:
        """A FastCDC instance; one per ``chunks`` call, since pyfastcdc's aren't shared-safe."""
        from pyfastcdc import FastCDC  # lazy: keeps `enigma --help` fast

        try:
            return FastCDC(
                self.avg_size,
                min_size=self.min_size,
                max_size=self.max_size,
                normalized_chunking=self.normalized_chunking,  # type: ignore[arg-type]
                seed=self.seed,
            )
        except (ValueError, OverflowError) as exc:  # our checks should have caught it
            raise ConfigError(f"invalid chunker options: {exc}") from exc

    @property
    def params(self) -> dict[str, Any]:
        """Everything that decides cut points; ``CdcChunker(**params)`` rebuilds the chunker."""
        return {
            "avg_size": self.avg_size,
            "min_size": self.min_size,
            "max_size": self.max_size,
            "normalized_chunking": self.normalized_chunking,
            "seed": self.seed,
        }

    def chunks(self, stream: BinaryIO) -> Iterator[bytes]:
        """Yield the chunks of ``stream`` in order (as ``bytes``); empty input yields nothing.

        Why not pyfastcdc's ``cut_stream``: it zero-fills a ``2 x max_size`` buffer (32 MiB
        by default) per stream up front, which costs ~14 ms and 32 MiB of RSS for every
        stream, however small (the gateway cuts one stream per PUT, many at once). Here
        the buffer grows only as far as the chunk being cut needs, and ``cut_buf`` decides
        the cut points, so they are exactly ``cut_stream``'s (``_final_ends`` says why).
        """
        fastcdc = self._fastcdc()
        buf = bytearray()
        eof = False
        want = self.avg_size
        while True:
            while not eof and len(buf) < want:
                data = stream.read(STREAM_READ)
                if data:
                    buf += data
                else:
                    eof = True
            if not buf:
                return
            ends = self._final_ends(fastcdc, buf, eof)
            start = 0
            for end in ends:
                with memoryview(buf) as view:  # ``buf`` may not change while it is viewed
                    piece = bytes(view[:end - start])
                # Drop the chunk from the buffer before handing it out: the consumer may
                # hold it a while (waiting for the upload budget), and the buffer then
                # shrinks instead of keeping a second copy.
                del buf[:end - start]
                start = end
                yield piece
            if eof and not buf:
                return
            # No final cut in what is buffered: read until the next try can find one (the
            # average size, then half an average more each time, up to max_size where a
            # cut is certain). Small steps keep the buffer near the chunk's real size.
            left = len(buf)
            want = self.avg_size if left < self.avg_size else \
                min(left + max(self.avg_size // 2, STREAM_READ), self.max_size)

    def _final_ends(self, fastcdc: Any, buf: bytearray, eof: bool) -> list[int]:
        """End offsets of the chunks ``cut_buf`` finds in ``buf`` that more data cannot move.

        FastCDC scans each chunk from its start and cuts at the first gear-hash match
        within ``max_size``; with at least ``avg_size`` bytes left the masks switch at the
        same place whatever follows, so a match found before the buffer's end is final,
        as is a forced cut with ``max_size`` bytes available, and anything at EOF.
        """
        ends: list[int] = []
        size = len(buf)
        with memoryview(buf) as view:
            cuts = fastcdc.cut_buf(view)
            chunk = None
            for chunk in cuts:
                left = size - chunk.offset
                end = chunk.offset + chunk.length
                if not (eof or left >= self.max_size
                        or (end < size and left >= self.avg_size)):
                    break
                ends.append(end)
            chunk = None  # drop its view of ``buf`` before the release
            cuts = None  # and the chunker's
        return ends

    def chunks_of(self, buffer: bytes | memoryview) -> Iterator[memoryview]:
        """Cut data already in memory: the views point into ``buffer`` (no copies)."""
        for chunk in self._fastcdc().cut_buf(buffer):
            yield chunk.data

    @property
    def single_chunk_limit(self) -> int:
        """FastCDC never cuts inside the first ``min_size`` bytes."""
        return self.min_size

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"CdcChunker({args})"


CHUNKERS = [CdcChunker]
