"""Per-chunk zstd compression.

zstandard's (de)compressor objects are not thread safe but are costly to create per
chunk, so each thread gets its own pair. Frames carry their content size, which lets
``decompress`` refuse an oversized output before allocating it.
"""

from __future__ import annotations

import threading
from typing import Any

from enigma.errors import ConfigError, IntegrityError
from enigma.interfaces import Compressor

__all__ = ["COMPRESSORS", "ZstdCompressor"]

LEVEL_RANGE = (1, 22)


class ZstdCompressor(Compressor):
    """zstd at a fixed level (default 3: fast, and most of the ratio of higher levels)."""

    name = "zstd"
    description = "Zstandard compression (levels 1-22)"

    def __init__(self, *, level: int = 3) -> None:
        low, high = LEVEL_RANGE
        if not isinstance(level, int) or isinstance(level, bool) or not low <= level <= high:
            raise ConfigError(f"zstd option 'level' must be an integer {low}-{high}, got {level!r}")
        self.level = level
        self._local = threading.local()

    def _contexts(self) -> Any:
        """This thread's compressor/decompressor pair, made on first use."""
        local = self._local
        if not hasattr(local, "cctx"):
            import zstandard  # lazy: keeps `enigma --help` fast

            local.cctx = zstandard.ZstdCompressor(level=self.level, write_content_size=True)
            local.dctx = zstandard.ZstdDecompressor()
        return local

    def compress(self, data: bytes | memoryview) -> bytes:
        """One zstd frame with the content size in its header."""
        return self._contexts().cctx.compress(data)

    def decompress(self, data: bytes | memoryview, max_size: int) -> bytes:
        """The original bytes; ``IntegrityError`` if corrupt or larger than ``max_size``."""
        import zstandard

        if max_size < 0:
            raise ValueError("max_size must be >= 0")
        local = self._contexts()
        try:
            declared = zstandard.frame_content_size(data)
            if declared > max_size:
                # zstandard trusts a declared size over max_output_size: check it first.
                raise IntegrityError(
                    f"zstd frame declares {declared} bytes, more than the allowed {max_size}"
                )
            out = local.dctx.decompress(
                data, max_output_size=max(max_size, 1), allow_extra_data=False
            )
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"corrupt zstd data: {exc}") from exc
        if len(out) > max_size or (declared >= 0 and len(out) != declared):
            raise IntegrityError(f"zstd output of {len(out)} bytes does not match its frame")
        return out

    def __repr__(self) -> str:
        return f"ZstdCompressor(level={self.level})"


COMPRESSORS = [ZstdCompressor]
