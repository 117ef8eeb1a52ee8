"""FixedChunker against the chunker contract, plus what only a fixed-size chunker promises."""

from __future__ import annotations

import io

import pytest
from enigma_chunker_fixed.chunker import DEFAULT_SIZE, MAX_SIZE, MIN_SIZE, FixedChunker

from enigma.errors import ConfigError, PluginError
from enigma.plugin_manager import PluginManager, construct
from enigma.plugins import builtin
from enigma.testing import ChunkerContract, random_bytes

KiB = 1024
MiB = 1024 * KiB


class TestFixedChunkerContract(ChunkerContract):
    """The shared suite; sizes include a non-power-of-two so no alignment luck hides bugs."""

    content_defined = False
    data_size = 3 * MiB + 777

    @pytest.fixture(params=[MIN_SIZE, 64 * KiB, 1 * MiB + 7], ids=["4k", "64k", "1m+7"])
    def chunker(self, request: pytest.FixtureRequest) -> FixedChunker:
        return FixedChunker(size=request.param)

    def test_insert_changes_few_chunks(self, chunker: FixedChunker) -> None:  # type: ignore[override]
        """The suite skips this for fixed chunkers; pin down what they do instead.

        Chunks before an insert are kept, and the chunks after it shift (which is why
        this chunker is for aligned data such as disk images, not for edited files).
        """
        data = self._data()
        middle = len(data) // 2
        edited = data[:middle] + b"inserted" + data[middle:]
        before = [bytes(c) for c in chunker.chunks_of(data)]
        after = [bytes(c) for c in chunker.chunks_of(edited)]
        kept = middle // chunker.size
        assert after[:kept] == before[:kept]
        assert not set(after[kept:]) & set(before[kept:])


class _Reads:
    """A stream with only ``read``, returning at most ``step`` bytes per call."""

    def __init__(self, data: bytes, step: int) -> None:
        self._buf = io.BytesIO(data)
        self._step = step

    def read(self, n: int = -1) -> bytes:
        return self._buf.read(min(n, self._step) if n >= 0 else self._step)


@pytest.mark.parametrize("length", [0, 1, 4095, 4096, 4097, 3 * 4096, 3 * 4096 + 5])
def test_every_chunk_but_the_last_is_exactly_size(length: int) -> None:
    data = random_bytes(length, seed=11)
    chunker = FixedChunker(size=4096)
    sizes = [len(c) for c in chunker.chunks(io.BytesIO(data))]
    expected = [4096] * (length // 4096) + ([length % 4096] if length % 4096 else [])
    assert sizes == expected
    assert [len(c) for c in chunker.chunks_of(data)] == expected
    assert [len(c) for c in chunker.chunks(_Reads(data, 1000))] == expected


def test_chunks_reuse_one_buffer() -> None:
    """One allocation per stream, not per chunk: the views share their buffer."""
    chunker = FixedChunker(size=4096)
    owners = {id(chunk.obj) for chunk in chunker.chunks(io.BytesIO(bytes(5 * 4096)))}
    assert len(owners) == 1


def test_chunks_of_does_not_copy() -> None:
    data = bytearray(random_bytes(10_000, seed=12))
    pieces = list(FixedChunker(size=4096).chunks_of(data))
    assert all(isinstance(p, memoryview) and p.obj is data for p in pieces)
    data[0] ^= 0xFF  # the views see the buffer itself
    assert pieces[0][0] == data[0]


def test_identical_aligned_blocks_give_identical_chunks() -> None:
    block = random_bytes(8192, seed=13)
    other = random_bytes(8192, seed=14)
    chunks = [bytes(c) for c in FixedChunker(size=8192).chunks(io.BytesIO(block + other + block))]
    assert chunks == [block, other, block]


def test_non_blocking_stream_is_refused() -> None:
    class WouldBlock:
        def readinto(self, buffer: memoryview) -> None:
            return None

    with pytest.raises(BlockingIOError):
        list(FixedChunker(size=4096).chunks(WouldBlock()))  # type: ignore[arg-type]


def test_params_and_limits() -> None:
    chunker = FixedChunker(size=65536)
    assert chunker.params == {"size": 65536}
    assert FixedChunker(**chunker.params).params == chunker.params
    assert chunker.single_chunk_limit == 65536
    assert FixedChunker().size == DEFAULT_SIZE
    assert FixedChunker(size=MIN_SIZE).size == MIN_SIZE
    assert FixedChunker(size=MAX_SIZE).size == MAX_SIZE
    assert repr(chunker) == "FixedChunker(size=65536)"


@pytest.mark.parametrize(
    ("size", "fragment"),
    [
        (MIN_SIZE - 1, "out of range [4096 (4 KiB), 67108864 (64 MiB)]"),
        (MAX_SIZE + 1, "out of range"),
        (0, "out of range"),
        (-4096, "out of range"),
        (True, "must be an integer number of bytes, got True"),
        (4096.0, "got 4096.0"),
        ("4 MiB", "got '4 MiB'"),
    ],
)
def test_bad_size_is_a_one_line_config_error(size: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        FixedChunker(size=size)  # type: ignore[arg-type]
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_config_errors_name_the_table() -> None:
    """Through ``construct``, as the core builds it: unknown and bad options say where."""

    def where(key: str | None) -> str:
        return "enigma.toml:4: [enigma.chunk_strategy.Fixed]" + (f" '{key}'" if key else "")

    with pytest.raises(ConfigError, match=r"^enigma.toml:4: \[enigma.chunk_strategy.Fixed\]: "
                                          r"chunker option 'size' = 1 is out of range"):
        construct(FixedChunker, {"size": 1}, where)
    with pytest.raises(ConfigError, match=r"'avg_size': unknown option for fixed \(accepted: size"):
        construct(FixedChunker, {"avg_size": 4096}, where)
    assert construct(FixedChunker, {}, where).size == DEFAULT_SIZE


def test_registered_through_the_entry_point() -> None:
    pm = PluginManager()
    assert pm.get("chunker", "Fixed") is FixedChunker
    rows = {row.name: row for row in pm.describe()}
    assert rows["enigma-chunker-fixed"].provides == {"chunker": ["fixed"]}
    assert not rows["enigma-chunker-fixed"].errors


def test_without_the_plugin_the_error_names_the_package() -> None:
    pm = PluginManager(load_entrypoints=False)
    pm.register(builtin, "enigma")
    with pytest.raises(PluginError) as err:
        pm.get("chunker", "Fixed")
    assert str(err.value) == ("unknown chunker 'Fixed' (installed: cdc); "
                              "install it with: pip install enigma-chunker-fixed")
