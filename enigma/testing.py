"""Contract suites for plugin authors: subclass one, provide its fixture, run pytest.

Like restic's backend conformance tests, these pin down what the core relies on, so a
third-party plugin proves it behaves like the built-ins::

    import pytest
    from enigma.testing import StorageProviderContract

    class TestMyStorage(StorageProviderContract):
        listing_count = 1100          # lower it for slow backends

        @pytest.fixture
        def provider(self, my_server):
            yield MyStorage(endpoint=my_server.url, bucket="fresh-empty-bucket")

The suites are plain classes (no ``Test`` prefix), so pytest only collects subclasses.
This module imports pytest: it is for test code only (``pip install enigma[testing]``).
For detailed assertion messages, call ``pytest.register_assert_rewrite("enigma.testing")``
in your ``conftest.py`` before importing it.
"""

from __future__ import annotations

import functools
import hashlib
import io
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, ClassVar

import pytest

from enigma.errors import AuthError, EnigmaError, IntegrityError, ObjectNotFound
from enigma.interfaces import (
    Chunker,
    Compressor,
    KeyMaterial,
    KeyProvider,
    StorageProvider,
)

__all__ = [
    "ChunkerContract",
    "CompressorContract",
    "KeyProviderContract",
    "StorageProviderContract",
    "random_bytes",
]

MiB = 1024 * 1024


@functools.lru_cache(maxsize=4)
def random_bytes(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes (cached: several tests share the same input)."""
    return random.Random(seed).randbytes(size)


def _chunk_key(n: int) -> str:
    """A key in the real chunk layout: ``chunks/<2 hex>/<64 hex>``."""
    digest = hashlib.sha256(b"contract-%d" % n).hexdigest()
    return f"chunks/{digest[:2]}/{digest}"


class _RandomStream(io.RawIOBase):
    """``size`` deterministic bytes produced on demand, hashed as they are read."""

    def __init__(self, size: int, seed: int = 1) -> None:
        self._left = size
        self._rng = random.Random(seed)
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._left)
        data = self._rng.randbytes(n)
        buffer[:n] = data
        self.sha256.update(data)
        self._left -= n
        return n


class _ShortReads:
    """A stream whose ``read`` returns fewer bytes than asked (like pipes and sockets)."""

    def __init__(self, data: bytes, seed: int = 2) -> None:
        self._view = memoryview(data)
        self._pos = 0
        self._rng = random.Random(seed)

    def _take(self, n: int) -> memoryview:
        if n < 0:
            n = len(self._view)
        step = min(n, self._rng.choice((1, 7, 100, 4096, 65536, 1 << 20)))
        out = self._view[self._pos : self._pos + step]
        self._pos += len(out)
        return out

    def read(self, n: int = -1) -> bytes:
        return bytes(self._take(n))


class _ShortReadinto(_ShortReads):
    """The same, through ``readinto`` (what buffered readers and pyfastcdc prefer)."""

    def readinto(self, buffer: Any) -> int:
        out = self._take(len(buffer))
        buffer[: len(out)] = out
        return len(out)


# -- storage ----------------------------------------------------------------------------


class StorageProviderContract:
    """What every ``StorageProvider`` must do. Fixture: ``provider`` -> a fresh, empty one."""

    #: Objects written for the listing test; past 1,000 to cross S3-style page limits.
    listing_count: ClassVar[int] = 1100
    #: Size of the streamed object; large enough to need multipart uploads on cloud stores.
    large_object_size: ClassVar[int] = 20 * MiB
    #: Worker threads for the concurrency test.
    threads: ClassVar[int] = 16

    def test_put_get_exists_delete(self, provider: StorageProvider) -> None:
        key = "meta/contract-basic"
        assert not provider.exists(key)
        provider.put(key, b"hello enigma")
        assert provider.exists(key)
        assert provider.get(key) == b"hello enigma"
        provider.delete(key)
        assert not provider.exists(key)
        with pytest.raises(ObjectNotFound):
            provider.get(key)

    def test_get_missing_raises_object_not_found(self, provider: StorageProvider) -> None:
        with pytest.raises(ObjectNotFound):
            provider.get("meta/never-written")
        with pytest.raises(ObjectNotFound):
            provider.get_range("meta/never-written", 0, 10)
        with pytest.raises(ObjectNotFound):
            stream = provider.get_stream("meta/never-written")
            try:
                stream.read(1)  # a lazy provider may only fail on the first read
            finally:
                stream.close()

    def test_delete_missing_is_noop(self, provider: StorageProvider) -> None:
        provider.delete("meta/never-written")
        provider.delete("chunks/00/never-written")

    def test_overwrite_and_idempotent_put(self, provider: StorageProvider) -> None:
        key = "meta/contract-overwrite"
        provider.put(key, b"first version")
        provider.put(key, b"second")
        assert provider.get(key) == b"second"
        provider.put(key, b"second")
        assert provider.get(key) == b"second"
        assert list(provider.list("meta/contract-overwrite")) == [key]

    def test_put_accepts_memoryview(self, provider: StorageProvider) -> None:
        data = bytearray(b"0123456789" * 10)
        provider.put("meta/contract-view", memoryview(data)[10:30])
        assert provider.get("meta/contract-view") == b"0123456789" * 2

    def test_get_range(self, provider: StorageProvider) -> None:
        key = "meta/contract-range"
        data = bytes(range(100))
        provider.put(key, data)
        assert provider.get_range(key, 0, 10) == data[:10]
        assert provider.get_range(key, 42, 8) == data[42:50]
        assert provider.get_range(key, 90, 50) == data[90:]  # runs past the end
        assert provider.get_range(key, 99, 1) == data[99:]
        assert provider.get_range(key, 100, 10) == b""  # starts at the end
        assert provider.get_range(key, 0, 0) == b""

    def test_list_with_prefix(self, provider: StorageProvider) -> None:
        keys = {
            "chunks/aa/" + "a" * 64,
            "chunks/aa/" + "a" * 63 + "b",
            "chunks/ab/" + "b" * 64,
            "keys/keystore",
            "meta/config",
        }
        for key in keys:
            provider.put(key, key.encode())
        assert set(provider.list("chunks/")) == {k for k in keys if k.startswith("chunks/")}
        assert set(provider.list("chunks/aa/")) == {k for k in keys if k.startswith("chunks/aa/")}
        assert set(provider.list("chunks/a")) == {k for k in keys if k.startswith("chunks/")}
        assert set(provider.list("meta/")) == {"meta/config"}
        assert set(provider.list("nothing/")) == set()
        assert set(provider.list("")) == keys
        assert set(provider.list()) == keys
        listed = list(provider.list(""))
        assert len(listed) == len(set(listed)), "list yielded a key twice"

    def test_list_many(self, provider: StorageProvider) -> None:
        count = self.listing_count
        keys = {f"meta/many/{i:05d}" for i in range(count)}

        def put(key: str) -> None:
            provider.put(key, b"x")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, sorted(keys)))
        listed = list(provider.list("meta/many/"))
        assert len(listed) == count
        assert set(listed) == keys

    def test_empty_object(self, provider: StorageProvider) -> None:
        provider.put("meta/contract-empty", b"")
        assert provider.exists("meta/contract-empty")
        assert provider.get("meta/contract-empty") == b""
        assert provider.get_range("meta/contract-empty", 0, 10) == b""
        assert "meta/contract-empty" in set(provider.list("meta/"))

    def test_large_object_streams(self, provider: StorageProvider) -> None:
        key = "meta/contract-large"
        source = _RandomStream(self.large_object_size)
        provider.put_stream(key, io.BufferedReader(source, 256 * 1024))
        stream = provider.get_stream(key)
        try:
            got = hashlib.sha256()
            total = 0
            while block := stream.read(1024 * 1024):
                got.update(block)
                total += len(block)
        finally:
            stream.close()
        assert total == self.large_object_size
        assert got.hexdigest() == source.sha256.hexdigest()
        head = provider.get_range(key, 0, 16)
        assert len(head) == 16

    def test_binary_data_all_byte_values(self, provider: StorageProvider) -> None:
        data = bytes(range(256)) * 64 + b"\x00\r\n\x1a\xff"
        provider.put("meta/contract-binary", data)
        assert provider.get("meta/contract-binary") == data

    def test_chunk_key_layout(self, provider: StorageProvider) -> None:
        keys = [_chunk_key(n) for n in range(20)]
        for key in keys:
            provider.put(key, key.encode())
        for key in keys:
            assert provider.exists(key)
            assert provider.get(key) == key.encode()
        assert set(provider.list("chunks/")) == set(keys)
        shard = keys[0][: len("chunks/ab/")]
        assert set(provider.list(shard)) == {k for k in keys if k.startswith(shard)}

    def test_concurrent_puts_and_gets(self, provider: StorageProvider) -> None:
        errors: list[BaseException] = []
        barrier = threading.Barrier(self.threads)
        shared = b"same bytes from every thread" * 100

        def work(worker: int) -> None:
            try:
                barrier.wait(timeout=30)
                for n in range(10):
                    key = _chunk_key(worker * 1000 + n)
                    data = random_bytes(1000 + worker * 37 + n, seed=worker * 1000 + n)
                    provider.put(key, data)
                    provider.put("meta/contract-shared", shared)  # everyone overwrites one key
                    assert provider.get(key) == data
                    assert provider.get("meta/contract-shared") == shared
            except BaseException as exc:
                errors.append(exc)
                raise

        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(work, range(self.threads)))
        assert not errors
        assert len(list(provider.list("chunks/"))) == self.threads * 10

    def test_check_passes(self, provider: StorageProvider) -> None:
        provider.check()


# -- chunkers ---------------------------------------------------------------------------


def _collect(chunker: Chunker, stream: BinaryIO | Any) -> list[bytes]:
    """Copy each chunk before asking for the next (a memoryview may be reused)."""
    out = []
    for chunk in chunker.chunks(stream):
        assert isinstance(chunk, bytes | memoryview)
        out.append(bytes(chunk))
    return out


class ChunkerContract:
    """What every ``Chunker`` must do. Fixture: ``chunker``."""

    #: Whether cut points follow content (an insert changes only nearby chunks).
    content_defined: ClassVar[bool] = True
    #: Size of the random input; make it many times the chunker's average chunk size.
    data_size: ClassVar[int] = 4 * MiB + 12345
    #: An insert in the middle may change at most this many chunks.
    max_changed_chunks: ClassVar[int] = 3

    def _data(self) -> bytes:
        return random_bytes(self.data_size, seed=3)

    def test_chunks_concatenate_to_input(self, chunker: Chunker) -> None:
        data = self._data()
        chunks = _collect(chunker, io.BytesIO(data))
        assert b"".join(chunks) == data
        assert all(chunks), "a chunk was empty"
        assert len(chunks) > 1, "make data_size several times the average chunk size"

    def test_empty_input_yields_no_chunks(self, chunker: Chunker) -> None:
        assert _collect(chunker, io.BytesIO(b"")) == []

    def test_small_input_is_one_chunk(self, chunker: Chunker) -> None:
        assert _collect(chunker, io.BytesIO(b"x")) == [b"x"]

    def test_deterministic(self, chunker: Chunker) -> None:
        data = self._data()
        first = [len(c) for c in _collect(chunker, io.BytesIO(data))]
        second = [len(c) for c in _collect(chunker, io.BytesIO(data))]
        assert first == second
        assert chunker.params == chunker.params

    def test_sizes_within_reported_bounds(self, chunker: Chunker) -> None:
        params = chunker.params
        sizes = [len(c) for c in _collect(chunker, io.BytesIO(self._data()))]
        if "max_size" in params:
            assert max(sizes) <= params["max_size"]
        if "min_size" in params:
            assert min(sizes[:-1], default=params["min_size"]) >= params["min_size"]

    def test_insert_changes_few_chunks(self, chunker: Chunker) -> None:
        if not self.content_defined:
            pytest.skip("not a content-defined chunker")
        data = self._data()
        middle = len(data) // 2
        edited = data[:middle] + b"inserted by the contract test" * 4 + data[middle:]
        before = {hashlib.sha256(c).digest() for c in _collect(chunker, io.BytesIO(data))}
        after = [hashlib.sha256(c).digest() for c in _collect(chunker, io.BytesIO(edited))]
        changed = [h for h in after if h not in before]
        assert 1 <= len(changed) <= self.max_changed_chunks
        assert len(after) - len(changed) >= len(before) - self.max_changed_chunks

    @pytest.mark.parametrize("use_readinto", [False, True], ids=["read", "readinto"])
    def test_short_reads(self, chunker: Chunker, use_readinto: bool) -> None:
        data = self._data()
        expected = [len(c) for c in _collect(chunker, io.BytesIO(data))]
        stream = _ShortReadinto(data) if use_readinto else _ShortReads(data)
        chunks = _collect(chunker, stream)
        assert b"".join(chunks) == data
        assert [len(c) for c in chunks] == expected, "cut points depend on read sizes"


# -- compressors ------------------------------------------------------------------------


class CompressorContract:
    """What every ``Compressor`` must do. Fixture: ``compressor``."""

    threads: ClassVar[int] = 8

    text = (
        b"Enigma cuts files into content-defined chunks, encrypts each one and spreads "
        b"them over several clouds. "
    ) * 400

    @pytest.mark.parametrize(
        "data",
        [b"", b"a", text, random_bytes(100_000, seed=4), bytes(range(256)) * 10],
        ids=["empty", "one-byte", "text", "random", "all-bytes"],
    )
    def test_round_trip(self, compressor: Compressor, data: bytes) -> None:
        packed = compressor.compress(data)
        assert isinstance(packed, bytes)
        assert compressor.decompress(packed, len(data)) == data
        assert compressor.decompress(packed, len(data) + 1000) == data

    def test_accepts_memoryview(self, compressor: Compressor) -> None:
        data = bytearray(self.text)
        packed = compressor.compress(memoryview(data)[100:5000])
        assert compressor.decompress(memoryview(packed), 4900) == self.text[100:5000]

    def test_compressible_data_shrinks(self, compressor: Compressor) -> None:
        assert len(compressor.compress(self.text)) < len(self.text) // 4

    def test_output_larger_than_max_size_is_refused(self, compressor: Compressor) -> None:
        packed = compressor.compress(self.text)
        with pytest.raises(IntegrityError):
            compressor.decompress(packed, len(self.text) - 1)
        with pytest.raises(IntegrityError):
            compressor.decompress(packed, 0)

    @pytest.mark.parametrize(
        "garbage",
        [b"", b"\x00", b"not compressed at all" * 10, random_bytes(4096, seed=5)],
        ids=["empty", "zero", "text", "random"],
    )
    def test_garbage_is_refused(self, compressor: Compressor, garbage: bytes) -> None:
        with pytest.raises(IntegrityError):
            compressor.decompress(garbage, 1 << 20)

    def test_truncated_is_refused(self, compressor: Compressor) -> None:
        packed = compressor.compress(random_bytes(50_000, seed=6))
        with pytest.raises(IntegrityError):
            compressor.decompress(packed[: len(packed) // 2], 1 << 20)

    def test_thread_safety(self, compressor: Compressor) -> None:
        barrier = threading.Barrier(self.threads)

        def work(worker: int) -> None:
            barrier.wait(timeout=30)
            for n in range(20):
                data = self.text[worker : worker + 20_000] + random_bytes(5000, seed=n)
                packed = compressor.compress(data)
                assert compressor.decompress(packed, len(data)) == data

        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(work, range(self.threads)))


# -- key providers ----------------------------------------------------------------------


class KeyProviderContract:
    """What every ``KeyProvider`` must do. Fixture: ``key_provider`` -> one with no key material.

    Override ``reopen`` to return a *new* instance over the same storage, so "after
    reload" really reads the stored material instead of an in-memory cache.
    """

    passphrase: ClassVar[str] = "contract-passphrase"
    wrong_passphrase: ClassVar[str] = "not-the-contract-passphrase"

    def reopen(self, key_provider: KeyProvider) -> KeyProvider:
        """A fresh instance over the same key storage; the default reuses the instance."""
        return key_provider

    def _pw(self, key_provider: KeyProvider) -> str | None:
        return self.passphrase if key_provider.needs_passphrase else None

    def _assert_valid(self, material: KeyMaterial) -> None:
        assert len(material.id_key) == 32
        assert material.data_keys, "no data keys"
        assert all(len(key) == 32 for key in material.data_keys.values())
        assert material.current_key_id in material.data_keys
        assert material.id_key not in material.data_keys.values()
        assert len(material.credential_key) in (0, 32)

    def test_exists_after_create(self, key_provider: KeyProvider) -> None:
        assert not key_provider.exists()
        material = key_provider.create(self._pw(key_provider))
        self._assert_valid(material)
        assert key_provider.exists()
        assert self.reopen(key_provider).exists()

    def test_create_twice_is_refused(self, key_provider: KeyProvider) -> None:
        first = key_provider.create(self._pw(key_provider))
        with pytest.raises(EnigmaError):
            key_provider.create(self._pw(key_provider))
        # and the refused attempt must not have replaced anything
        again = self.reopen(key_provider).load(self._pw(key_provider))
        assert again.id_key == first.id_key
        assert again.data_keys == first.data_keys

    def test_load_returns_the_same_keys(self, key_provider: KeyProvider) -> None:
        created = key_provider.create(self._pw(key_provider))
        loaded = self.reopen(key_provider).load(self._pw(key_provider))
        self._assert_valid(loaded)
        assert loaded.id_key == created.id_key
        assert loaded.data_keys == created.data_keys
        assert loaded.current_key_id == created.current_key_id
        assert loaded.credential_key == created.credential_key

    def test_rotate_adds_a_current_version(self, key_provider: KeyProvider) -> None:
        created = key_provider.create(self._pw(key_provider))
        rotated = key_provider.rotate(self._pw(key_provider))
        self._assert_valid(rotated)
        new_id = max(created.data_keys) + 1
        assert rotated.current_key_id == new_id
        assert set(rotated.data_keys) == {*created.data_keys, new_id}
        assert rotated.data_keys[new_id] not in created.data_keys.values()
        assert rotated.id_key == created.id_key, "id_key must never rotate (dedup)"
        for version, key in created.data_keys.items():
            assert rotated.data_keys[version] == key

        twice = key_provider.rotate(self._pw(key_provider))
        assert twice.current_key_id == new_id + 1

        reopened = self.reopen(key_provider)
        loaded = reopened.load(self._pw(key_provider))
        assert loaded.current_key_id == new_id + 1
        assert loaded.id_key == created.id_key
        assert loaded.data_keys == twice.data_keys
        assert reopened.versions(self._pw(key_provider)) == sorted(twice.data_keys)

    def test_versions(self, key_provider: KeyProvider) -> None:
        created = key_provider.create(self._pw(key_provider))
        assert key_provider.versions(self._pw(key_provider)) == sorted(created.data_keys)

    def test_wrong_passphrase_is_refused(self, key_provider: KeyProvider) -> None:
        if not key_provider.needs_passphrase:
            pytest.skip("this provider takes no passphrase")
        created = key_provider.create(self.passphrase)
        reopened = self.reopen(key_provider)
        with pytest.raises(AuthError):
            reopened.load(self.wrong_passphrase)
        with pytest.raises(AuthError):
            reopened.rotate(self.wrong_passphrase)
        # a refused rotation must not have added a version
        assert reopened.load(self.passphrase).data_keys == created.data_keys
