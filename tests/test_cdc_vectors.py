"""FastCDC 2020 reference vectors (the `fastcdc` Rust crate's), through ``CdcChunker``.

Cut points are part of the stored format: if these change, existing backups stop
deduplicating against new ones. So they are checked through the plugin on a real file
stream, exactly as a backup reads it, not just through pyfastcdc.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from enigma.plugins.cdc import CdcChunker

IMAGE = Path(__file__).parent / "data" / "SekienAkashita.jpg"

VECTORS = [
    # (min, avg, max, normalization, seed) -> lengths
    ((4096, 16384, 65535, 1, 0), [21325, 17140, 28084, 18217, 24700]),
    ((8192, 32768, 131072, 1, 0), [66549, 42917]),
    ((4096, 16384, 65535, 0, 0), [6634, 59915, 25597, 5237, 12083]),
    ((8192, 16384, 32768, 3, 0), [17350, 19911, 17426, 17519, 19940, 17320]),
    ((4096, 16384, 65535, 1, 666), [10605, 55745, 11346, 5883, 11586, 14301]),
]

#: What the older "ronomon" FastCDC (the `fastcdc` PyPI package) gives for 8192/16384/32768.
RONOMON = [22366, 8282, 16303, 18696, 32768, 11051]


def _lengths(chunker: CdcChunker) -> list[int]:
    with IMAGE.open("rb") as fh:
        return [len(chunk) for chunk in chunker.chunks(fh)]


def test_input_file() -> None:
    assert IMAGE.stat().st_size == 109_466


@pytest.mark.parametrize(
    ("settings", "expected"),
    VECTORS,
    ids=[f"{s[0]}-{s[1]}-{s[2]}-nc{s[3]}-seed{s[4]}" for s, _ in VECTORS],
)
def test_reference_vectors(settings: tuple[int, int, int, int, int], expected: list[int]) -> None:
    min_size, avg_size, max_size, nc, seed = settings
    chunker = CdcChunker(
        min_size=min_size,
        avg_size=avg_size,
        max_size=max_size,
        normalized_chunking=nc,
        seed=seed,
    )
    assert _lengths(chunker) == expected
    assert sum(expected) == IMAGE.stat().st_size


def test_reference_vectors_with_target_size_alias() -> None:
    chunker = CdcChunker(min_size=4096, target_size=16384, max_size=65535)
    assert _lengths(chunker) == VECTORS[0][1]


@pytest.mark.parametrize("nc", [0, 1, 2, 3])
def test_not_the_ronomon_variant(nc: int) -> None:
    chunker = CdcChunker(min_size=8192, avg_size=16384, max_size=32768, normalized_chunking=nc)
    assert _lengths(chunker) != RONOMON
