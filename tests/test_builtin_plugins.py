"""The built-in plugins against the contract suites, plus what only they promise."""

from __future__ import annotations

import errno
import io
import os
import stat
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from enigma.errors import ConfigError, IntegrityError, ObjectNotFound, StorageError
from enigma.interfaces import ProviderSlot
from enigma.plugins import local_storage
from enigma.plugins.cdc import CHUNKERS, CdcChunker
from enigma.plugins.distribution import (
    DISTRIBUTION_POLICIES,
    Erasure,
    Replicate,
    RoundRobin,
    Weighted,
)
from enigma.plugins.local_storage import STORAGE_PROVIDERS, LocalStorage
from enigma.plugins.zstd import COMPRESSORS, ZstdCompressor
from enigma.testing import (
    ChunkerContract,
    CompressorContract,
    KeyProviderContract,
    StorageProviderContract,
    random_bytes,
)

MiB = 1024 * 1024
HEX = "0123456789abcdef" * 4


# -- contract suites --------------------------------------------------------------------


class TestLocalStorageContract(StorageProviderContract):
    """The default (batched fsync) mode; the fsync="always" mode is exercised below."""

    @pytest.fixture
    def provider(self, tmp_path: Path) -> Iterator[LocalStorage]:
        store = LocalStorage(path=str(tmp_path / "store"))
        assert store.create_bucket()
        yield store
        store.close()


class TestCdcContract(ChunkerContract):
    """Small sizes so the contract runs fast; the cut logic is the same at any size."""

    data_size = 3 * MiB + 777

    @pytest.fixture
    def chunker(self) -> CdcChunker:
        return CdcChunker(avg_size=16 * 1024)


class TestCdcDefaultsContract(ChunkerContract):
    """The shipped defaults (1 / 4 / 16 MiB) on ~40 MB, enough for several chunks."""

    data_size = 40 * 1000 * 1000

    @pytest.fixture
    def chunker(self) -> CdcChunker:
        return CdcChunker()


class TestZstdContract(CompressorContract):
    @pytest.fixture
    def compressor(self) -> ZstdCompressor:
        return ZstdCompressor()


try:  # the key provider is another engineer's module; hook it up once it imports
    from enigma.plugins.local_keys import LocalKeyProvider
except ImportError:  # pragma: no cover - only while local_keys.py is missing
    LocalKeyProvider = None  # type: ignore[assignment,misc]


@pytest.mark.skipif(LocalKeyProvider is None, reason="enigma.plugins.local_keys not available")
class TestLocalKeyContract(KeyProviderContract):
    @pytest.fixture
    def key_provider(self, tmp_path: Path) -> Any:
        self.config_dir = str(tmp_path)  # pytest makes a fresh instance per test
        return LocalKeyProvider(config_dir=self.config_dir)

    def reopen(self, key_provider: Any) -> Any:
        return LocalKeyProvider(config_dir=self.config_dir)


def test_module_lists() -> None:
    assert (
        [LocalStorage],
        [CdcChunker],
        [ZstdCompressor],
        [RoundRobin, Weighted, Replicate, Erasure],
    ) == (STORAGE_PROVIDERS, CHUNKERS, COMPRESSORS, DISTRIBUTION_POLICIES)
    assert (LocalStorage.name, CdcChunker.name, ZstdCompressor.name) == ("local", "cdc", "zstd")
    assert CdcChunker.aliases == ("fastcdc",)
    assert (RoundRobin.name, RoundRobin.aliases) == ("round-robin", ("roundrobin",))
    assert Weighted.name == "weighted"


# -- local storage ----------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> LocalStorage:
    s = LocalStorage(path=str(tmp_path / "store"), fsync="always")
    s.create_bucket()
    return s


def _files(root: str) -> list[str]:
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]


def _enospc(*_args: Any, **_kwargs: Any) -> Any:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_local_layout_and_modes(store: LocalStorage) -> None:
    key = f"chunks/ab/{HEX}"
    store.put(key, b"data")
    path = os.path.join(store.root, "chunks", "ab", HEX)
    assert Path(path).read_bytes() == b"data"
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0
    assert stat.S_IMODE(os.stat(store.root).st_mode) & 0o077 == 0


def test_local_put_uses_temp_file_in_same_directory(
    store: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        calls.append((src, dst))
        real_replace(src, dst)

    monkeypatch.setattr(local_storage.os, "replace", spy)
    store.put("meta/x", b"1")
    [(src, dst)] = calls
    assert os.path.dirname(src) == os.path.dirname(dst)
    assert os.path.basename(src).startswith(".tmp-")


@pytest.mark.parametrize("failing", ["fsync", "write"])
def test_local_failed_put_leaves_nothing(
    store: LocalStorage, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    store.put("meta/old", b"old content")
    real_write = os.write

    def write_half_then_fail(fd: int, data: Any) -> int:
        if len(data) > 10:
            return real_write(fd, data[: len(data) // 2])
        return _enospc()

    with monkeypatch.context() as m:
        m.setattr(
            local_storage.os, failing, _enospc if failing == "fsync" else write_half_then_fail
        )
        with pytest.raises(StorageError, match="no space") as info:
            store.put("meta/new", b"x" * 1000)
        with pytest.raises(StorageError, match="no space"):
            store.put("meta/old", b"y" * 1000)
    assert "\n" not in str(info.value)
    assert store.root in str(info.value)
    assert not store.exists("meta/new")
    with pytest.raises(ObjectNotFound):
        store.get("meta/new")
    assert store.get("meta/old") == b"old content"
    assert [os.path.basename(f) for f in _files(store.root)] == ["old"]


def test_local_failed_stream_leaves_nothing(store: LocalStorage) -> None:
    class Broken(io.RawIOBase):
        def __init__(self) -> None:
            self.calls = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            self.calls += 1
            if self.calls > 2:
                raise OSError(errno.EIO, "source went away")
            buffer[:100] = b"z" * 100
            return 100

    with pytest.raises(OSError, match="source went away"):
        store.put_stream("meta/stream", io.BufferedReader(Broken()))
    assert not store.exists("meta/stream")
    assert _files(store.root) == []


def test_local_put_stream_reads_blocks(store: LocalStorage) -> None:
    sizes: list[int] = []

    class Source(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            sizes.append(-1 if n is None else n)
            return super().read(n)

    data = random_bytes(3 * MiB + 5)
    store.put_stream("meta/blob", Source(data))
    assert store.get("meta/blob") == data
    assert set(sizes) == {local_storage.STREAM_BLOCK}


def test_local_list_skips_temp_files_and_walks_deep(store: LocalStorage) -> None:
    store.put(f"chunks/ab/{HEX}", b"1")
    store.put("keys/keystore", b"2")
    Path(store.root, "chunks", "ab", ".tmp-abandoned").write_bytes(b"partial")
    assert sorted(store.list()) == [f"chunks/ab/{HEX}", "keys/keystore"]
    assert list(store.list("chunks/ab/.tmp")) == []
    assert list(store.list("keys/keystore")) == ["keys/keystore"]
    assert list(store.list("keys/keystore/")) == []


@pytest.mark.parametrize(
    "key",
    [
        "",
        "../escape",
        "chunks/../../escape",
        "..",
        "/etc/passwd",
        "chunks\\ab\\x",
        "chunks//x",
        "chunks/x/",
        "./x",
        "chunks/./x",
        "chunks/.tmp-x",
        "nul\x00byte",
    ],
)
def test_local_rejects_unsafe_keys(store: LocalStorage, key: str) -> None:
    for call in (
        lambda: store.put(key, b"x"),
        lambda: store.get(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.get_range(key, 0, 1),
    ):
        with pytest.raises(StorageError, match="invalid object key"):
            call()
    assert _files(os.path.dirname(store.root)) == []


def test_local_rejects_traversing_list_prefix(store: LocalStorage) -> None:
    with pytest.raises(StorageError):
        list(store.list("../"))


def test_local_key_that_is_a_directory(store: LocalStorage) -> None:
    store.put("meta/dir/child", b"1")
    assert not store.exists("meta/dir")
    with pytest.raises(ObjectNotFound):
        store.get("meta/dir")
    store.delete("meta/dir")  # not an object: nothing to delete
    assert store.get("meta/dir/child") == b"1"
    with pytest.raises(StorageError, match="meta/dir"):
        store.put("meta/dir", b"clash")
    with pytest.raises(StorageError):
        store.put("meta/dir/child/grandchild", b"clash")
    assert _files(store.root) == [os.path.join(store.root, "meta", "dir", "child")]


def test_local_get_stream_is_a_file(store: LocalStorage) -> None:
    store.put("meta/s", b"abc" * 1000)
    with store.get_stream("meta/s") as fh:
        assert fh.read(3) == b"abc"
        assert len(fh.read()) == 2997


def test_local_get_range_rejects_negative(store: LocalStorage) -> None:
    store.put("meta/r", b"abc")
    with pytest.raises(ValueError):
        store.get_range("meta/r", -1, 2)


def test_local_bucket_is_an_alias_for_path(tmp_path: Path) -> None:
    via_bucket = LocalStorage(
        bucket=str(tmp_path / "b"),
        region="us-east-1",
        endpoint_url="http://ignored",
        path_style=True,
        access_key="ignored",
        secret_key="ignored",
    )
    assert via_bucket.root == str(tmp_path / "b")
    both = LocalStorage(path=str(tmp_path / "p"), bucket="enigma-bucket")
    assert both.root == str(tmp_path / "p")


def test_local_needs_a_path() -> None:
    with pytest.raises(ConfigError, match="Local storage needs 'path' \\(or 'bucket'\\)"):
        LocalStorage()
    with pytest.raises(ConfigError):
        LocalStorage(path="", bucket="")


def test_local_relative_path_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert LocalStorage(path="rel").root == str(tmp_path / "rel")


def test_local_check_and_create_bucket(tmp_path: Path) -> None:
    s = LocalStorage(path=str(tmp_path / "deep" / "store"))
    with pytest.raises(StorageError, match="does not exist"):
        s.check()
    with pytest.raises(StorageError, match="does not exist"):
        list(s.list())
    assert s.create_bucket() is True
    assert stat.S_IMODE(os.stat(s.root).st_mode) == 0o700
    assert s.create_bucket() is False
    s.check()
    assert os.listdir(s.root) == []  # the probe cleaned up after itself
    Path(tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageError, match="not a directory"):
        LocalStorage(path=str(tmp_path / "file")).create_bucket()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_local_check_unwritable(tmp_path: Path) -> None:  # pragma: no cover - needs non-root
    s = LocalStorage(path=str(tmp_path / "ro"))
    s.create_bucket()
    os.chmod(s.root, 0o500)
    try:
        with pytest.raises(StorageError, match="not writable"):
            s.check()
    finally:
        os.chmod(s.root, 0o700)


def test_local_check_read_only(store: LocalStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    def read_only(*_args: Any, **_kwargs: Any) -> Any:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(local_storage.tempfile, "mkstemp", read_only)
    with pytest.raises(StorageError, match="not writable: read-only file system"):
        store.check()


def test_local_put_does_not_create_a_missing_root(tmp_path: Path) -> None:
    """An unmounted NAS must not turn into writes on the local disk's mount point."""
    s = LocalStorage(path=str(tmp_path / "mnt" / "nas"))
    with pytest.raises(StorageError, match="does not exist"):
        s.put(f"chunks/ab/{HEX}", b"x")
    assert not (tmp_path / "mnt").exists()
    s.create_bucket()
    s.put(f"chunks/ab/{HEX}", b"x")
    assert s.get(f"chunks/ab/{HEX}") == b"x"


def test_local_concurrent_same_new_directories(store: LocalStorage) -> None:
    """Many threads creating the same fresh shard directory at once must all succeed."""
    keys = [f"chunks/{i % 4:02x}/{i:064x}" for i in range(64)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.put(k, k.encode()), keys))
    assert sorted(store.list("chunks/")) == sorted(keys)


# -- CDC ----------------------------------------------------------------------------------


def test_cdc_defaults_and_params() -> None:
    c = CdcChunker()
    assert c.params == {
        "avg_size": 1 * MiB,
        "min_size": 512 * 1024,
        "max_size": 8 * MiB,
        "normalized_chunking": 1,
        "seed": 0,
    }
    assert CdcChunker(**c.params).params == c.params
    # An average given alone gets pyfastcdc's bounds, a quarter and four times it.
    assert CdcChunker(avg_size=4 * MiB).params["min_size"] == 1 * MiB
    assert CdcChunker(avg_size=4 * MiB).params["max_size"] == 16 * MiB


def test_cdc_target_size_alias() -> None:
    assert CdcChunker(target_size=65536).params["avg_size"] == 65536
    assert CdcChunker(target_size=65536, avg_size=65536).params["avg_size"] == 65536
    with pytest.raises(ConfigError, match="target_size"):
        CdcChunker(target_size=65536, avg_size=32768)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"avg_size": 100}, "avg_size"),
        ({"avg_size": 8 * MiB}, "avg_size"),
        ({"avg_size": 16384, "min_size": 32}, "min_size"),
        ({"avg_size": 4 * MiB, "min_size": 2 * MiB}, "min_size"),
        ({"avg_size": 16384, "min_size": 32768}, "min_size"),
        ({"avg_size": 16384, "max_size": 8192}, "max_size"),
        ({"max_size": 32 * MiB}, "max_size"),
        ({"avg_size": 16384, "max_size": 512}, "max_size"),
        ({"normalized_chunking": 4}, "normalized_chunking"),
        ({"normalized_chunking": -1}, "normalized_chunking"),
        ({"seed": -1}, "seed"),
        ({"seed": 1 << 64}, "seed"),
        ({"avg_size": "4MiB"}, "avg_size"),
        ({"avg_size": 16384.0}, "avg_size"),
        ({"min_size": True}, "min_size"),
        ({"target_size": 10}, "avg_size"),
    ],
)
def test_cdc_bad_options(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named) as info:
        CdcChunker(**options)
    assert "\n" not in str(info.value)


def test_cdc_chunks_stay_valid_after_the_next_one(tmp_path: Path) -> None:
    data = random_bytes(1 * MiB, seed=9)
    chunks = [bytes(c) for c in CdcChunker(avg_size=4096).chunks(io.BytesIO(data))]
    assert b"".join(chunks) == data
    path = tmp_path / "f"
    path.write_bytes(data)
    with open(path, "rb") as fh:
        pieces = iter(CdcChunker(avg_size=4096).chunks(fh))
        first = next(pieces)
        rest = list(pieces)
    assert isinstance(first, bytes)  # a copy: callers may keep it without copying again
    assert [first, *rest] == chunks


def test_cdc_is_reentrant_across_threads() -> None:
    """One chunker instance serves many files at once (the pipeline shares it)."""
    chunker = CdcChunker(avg_size=8192)
    inputs = [random_bytes(512 * 1024 + i, seed=i) for i in range(8)]
    expected = [[len(c) for c in chunker.chunks(io.BytesIO(d))] for d in inputs]

    def run(i: int) -> list[int]:
        return [len(c) for c in chunker.chunks(io.BytesIO(inputs[i]))]

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(run, range(8))) == expected


# -- zstd ---------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [0, 23, -1, "3", 3.0, True, None])
def test_zstd_bad_level(level: Any) -> None:
    with pytest.raises(ConfigError, match="level"):
        ZstdCompressor(level=level)


def test_zstd_levels_and_frame() -> None:
    import zstandard

    data = b"enigma " * 10000
    for level in (1, 3, 19, 22):
        packed = ZstdCompressor(level=level).compress(data)
        assert zstandard.frame_content_size(packed) == len(data)
        assert ZstdCompressor().decompress(packed, len(data)) == data


def test_zstd_refuses_declared_bomb_before_allocating() -> None:
    """A tiny frame declaring a huge size is refused from its header alone."""
    import zstandard

    bomb = zstandard.ZstdCompressor().compress(b"\x00" * (64 * MiB))
    assert len(bomb) < 10_000
    with pytest.raises(IntegrityError, match="declares"):
        ZstdCompressor().decompress(bomb, 1 * MiB)


def test_zstd_frame_without_content_size_is_still_bounded() -> None:
    import zstandard

    data = b"abc" * 100_000
    packed = zstandard.ZstdCompressor(write_content_size=False).compress(data)
    z = ZstdCompressor()
    assert z.decompress(packed, len(data)) == data
    with pytest.raises(IntegrityError):
        z.decompress(packed, len(data) - 1)


def test_zstd_refuses_trailing_data() -> None:
    z = ZstdCompressor()
    packed = z.compress(b"payload" * 100)
    with pytest.raises(IntegrityError):
        z.decompress(packed + b"junk", 1 * MiB)
    with pytest.raises(IntegrityError):
        z.decompress(packed + packed, 1 * MiB)


# -- distribution -------------------------------------------------------------------------


def _slots(*weights: int) -> list[ProviderSlot]:
    return [ProviderSlot(label, w) for label, w in zip("abcdefgh", weights, strict=False)]


def _picks(policy: Any, n: int) -> list[str]:
    out = []
    for i in range(n):
        chosen = policy.choose(i.to_bytes(32, "big"), 1000)
        assert isinstance(chosen, list) and len(chosen) == 1
        out.append(chosen[0])
    return out


def test_round_robin_order() -> None:
    assert _picks(RoundRobin(_slots(1, 1, 1)), 7) == list("abcabca")
    assert _picks(RoundRobin(_slots(5, 1)), 4) == list("abab")  # weights are ignored
    assert _picks(RoundRobin(_slots(1)), 3) == list("aaa")


def test_policies_need_a_provider() -> None:
    for cls in (RoundRobin, Weighted):
        with pytest.raises(ValueError):
            cls([])


def test_weighted_exact_spread() -> None:
    picks = _picks(Weighted(_slots(2, 1, 1, 1)), 500)
    assert Counter(picks) == {"a": 200, "b": 100, "c": 100, "d": 100}


@pytest.mark.parametrize("weights", [(2, 1, 1, 1), (5, 1, 1), (3, 2), (7, 3, 1), (10, 1)])
def test_weighted_is_smooth(weights: tuple[int, ...]) -> None:
    """At every point of the sequence each provider is less than one pick off its share."""
    total = sum(weights)
    picks = _picks(Weighted(_slots(*weights)), total * 4)
    counts: Counter[str] = Counter()
    for n, label in enumerate(picks, start=1):
        counts[label] += 1
        for slot in _slots(*weights):
            assert abs(counts[slot.label] - n * slot.weight / total) < 1
    # nginx's sequence for 5,1,1 interleaves the light providers
    if weights == (5, 1, 1):
        assert "".join(picks[:7]) == "aabacaa"


def test_weighted_is_deterministic() -> None:
    assert _picks(Weighted(_slots(3, 2, 1)), 60) == _picks(Weighted(_slots(3, 2, 1)), 60)


@pytest.mark.parametrize("weight", [0, -1, 1.5, True, "2"])
def test_weighted_bad_weights(weight: Any) -> None:
    with pytest.raises(ConfigError, match="weight"):
        Weighted([ProviderSlot("a", 1), ProviderSlot("b", weight)])


@pytest.mark.parametrize("cls", [RoundRobin, Weighted])
def test_policies_are_thread_safe(cls: Any) -> None:
    policy = cls(_slots(2, 1, 1, 1))
    per_thread = 1000

    def run(_: int) -> list[str]:
        return _picks(policy, per_thread)

    with ThreadPoolExecutor(8) as pool:
        picks = [p for chunk in pool.map(run, range(8)) for p in chunk]
    counts = Counter(picks)
    total = 8 * per_thread
    if cls is RoundRobin:
        assert counts == {label: total // 4 for label in "abcd"}
    else:
        assert counts == {"a": total * 2 // 5, "b": total // 5, "c": total // 5, "d": total // 5}


class TestLocalStorageAlwaysFsyncContract(StorageProviderContract):
    @pytest.fixture
    def provider(self, tmp_path: Path) -> Iterator[LocalStorage]:
        store = LocalStorage(path=str(tmp_path / "store"), fsync="always")
        store.create_bucket()
        yield store


def test_local_batch_mode_syncs_with_one_call(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(local_storage.os, "fsync", lambda fd: calls.append("fsync") or
                        real_fsync(fd))
    batch = LocalStorage(path=str(tmp_path / "batch"))
    batch.create_bucket()
    calls.clear()
    for i in range(20):
        batch.put(f"chunks/aa/{i}", b"x")
    assert calls == []  # no per-object flush
    batch.sync()
    assert sorted(batch.list("chunks/")) == sorted(f"chunks/aa/{i}" for i in range(20))
    always = LocalStorage(path=str(tmp_path / "always"), fsync="always")
    always.create_bucket()
    always.put("chunks/aa/0", b"x")
    assert calls.count("fsync") >= 2  # the file and its directory
    with pytest.raises(ConfigError, match="fsync"):
        LocalStorage(path=str(tmp_path / "x"), fsync="sometimes")
