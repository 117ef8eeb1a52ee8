"""Chunks in and out of storage: id, dedup, compress, seal, place; fetch, open, check.

The one place that turns plaintext into stored objects and back, shared by backup,
restore, verify, repair and the S3 gateway. A chunk lives on one provider, as whole copies
on several (Replicate), or as Reed-Solomon shards on several (Erasure, ``enigma.erasure``).
Every object is self-describing, so a read needs only the chunk's provider labels: copies
are tried one after another, shards gathered k at a time in parallel, and anything missing,
unreachable or damaged is passed over until the AES-GCM tag accepts a result.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Generic, TypeVar

from enigma import crypto, erasure
from enigma.errors import (
    ConfigError,
    IntegrityError,
    ObjectNotFound,
    StorageError,
    TransientStorageError,
)
from enigma.interfaces import DistributionPolicy, StorageProvider
from enigma.manifest import ChunkRecord
from enigma.packs import PACK_PREFIX, pack_id_from_key, pack_key
from enigma.plugins.distribution import Redundancy, redundancy_of
from enigma.recipient import WriteOnlyError
from enigma.repository import Repository
from enigma.telemetry import TELEMETRY

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds a transient storage failure is retried before the operation gives up
#: (``ENIGMA_RETRY_SECONDS`` overrides); each wait is at most MAX_BACKOFF.
DEFAULT_RETRY_SECONDS = 30.0
MAX_BACKOFF = 5.0
#: Keep compression only if it saves at least this fraction (else store raw, read faster).
MIN_SAVING = 0.02
#: Bytes of a large chunk test-compressed to decide whether compressing it pays, taken as
#: this many slices spread evenly over the chunk.
SAMPLE = 64 * 1024
SAMPLE_SLICES = 4
#: Threads fetching the shards of one chunk at once, shared by every ChunkStore.
SHARD_FETCH_THREADS = 32
#: Sets of k shards tried per chunk when decoded shards fail authentication (tampering that
#: kept the CRCs right); C(k+m, k) is small for any sensible layout.
MAX_DECODE_TRIES = 32


def chunk_key(chunk_id: bytes) -> str:
    """Object name of a chunk: ``chunks/<2 hex>/<64 hex>`` (DESIGN.md section 4)."""
    hexid = chunk_id.hex()
    return f"chunks/{hexid[:2]}/{hexid}"


def chunk_id_from_key(key: str) -> bytes | None:
    """Inverse of ``chunk_key``; None for anything that is not a chunk object."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != "chunks" or len(parts[2]) != 64:
        return None
    try:
        return bytes.fromhex(parts[2])
    except ValueError:
        return None


def stored_chunks(label: str, provider: StorageProvider) -> dict[bytes, str]:
    """Chunk id -> object name of every chunk object ``provider`` lists (with retries):
    what gc, check, recover and a resumed backup compare with the manifest."""
    keys = with_retries(f"listing provider '{label}'", lambda: list(provider.list("chunks/")),
                        provider=label)
    return {chunk_id: key for key in keys if (chunk_id := chunk_id_from_key(key)) is not None}


def stored_packs(label: str, provider: StorageProvider) -> dict[bytes, str]:
    """Pack id -> object name of every pack object ``provider`` lists (with retries)."""
    keys = with_retries(f"listing provider '{label}'",
                        lambda: list(provider.list(PACK_PREFIX)), provider=label)
    return {pack_id: key for key in keys if (pack_id := pack_id_from_key(key)) is not None}


def retry_seconds() -> float:
    """How long a transient failure is retried: ``ENIGMA_RETRY_SECONDS``, default 30 s."""
    try:
        return max(0.0, float(os.environ.get("ENIGMA_RETRY_SECONDS", DEFAULT_RETRY_SECONDS)))
    except ValueError:
        return DEFAULT_RETRY_SECONDS


def with_retries(what: str, action: Callable[..., T], *args: Any,
                 provider: str | None = None) -> T:
    """Run a storage call, retrying transient failures with exponential backoff and full
    jitter until the retry budget is spent; permanent failures stop at once. Either way the
    error names ``what`` (e.g. the provider) in one line.

    Errors and retries are counted by provider (``enigma.telemetry``): ``provider`` names
    it, else the label of the provider whose bound method ``action`` is.
    """
    budget = retry_seconds()
    started = time.monotonic()
    attempt = 0
    while True:
        try:
            return action(*args)
        except ObjectNotFound:
            raise
        except TransientStorageError as exc:
            label = provider or _label_of(action)
            attempt += 1
            delay = random.uniform(0, min(MAX_BACKOFF, 0.1 * 2 ** attempt))
            elapsed = time.monotonic() - started
            if elapsed + delay > budget:
                TELEMETRY.backend_error(label, "exhausted")
                raise StorageError(f"{what}: {exc} (gave up after {attempt} tries in "
                                   f"{elapsed:.1f} s)") from exc
            TELEMETRY.backend_error(label, "transient")
            TELEMETRY.backend_retry(label)
            log.info(
                "%s failed (attempt %d, provider '%s'): %s; retrying in %.2f s", what,
                attempt, label, exc, delay)
            time.sleep(delay)
        except StorageError as exc:
            TELEMETRY.backend_error(provider or _label_of(action), "permanent")
            raise StorageError(f"{what}: {exc}") from exc


def _label_of(action: Callable[..., Any]) -> str:
    return str(getattr(getattr(action, "__self__", None), "label", None) or "unknown")


@dataclass
class StoredChunk:
    """The outcome of storing one chunk: its id, and a new record unless it was a duplicate."""

    chunk_id: bytes
    size: int
    record: ChunkRecord | None


@dataclass
class Fetched:
    """One provider's object of a chunk, or why there is none."""

    label: str
    blob: bytes | None = None
    error: str = ""
    #: False when the chunk lists a provider that is no longer in the config.
    configured: bool = True


class ChunkAssembler(Generic[T]):
    """The objects read for one chunk so far, and the first result they yield.

    A whole copy is handed to ``accept`` at once; shards are grouped by encoding (set id,
    k, m, length) and every new set of k of one encoding is decoded and handed to
    ``accept``. ``accept`` raises ``IntegrityError`` to reject a candidate (AES-GCM), and
    the next one is tried.
    """

    def __init__(self, chunk_id: bytes, accept: Callable[[bytes], T]) -> None:
        self.chunk_id = chunk_id
        self.accept = accept
        self.errors: list[str] = []
        #: encoding -> shard index -> (label, shard)
        self.sets: dict[tuple[bytes, int, int, int], dict[int, tuple[str, erasure.Shard]]] = {}
        self._tried: set[tuple[Any, ...]] = set()
        self.result: T | None = None
        self.sealed: bytes | None = None
        #: The encoding the accepted sealed chunk was decoded from; None for a whole copy.
        self.encoding: tuple[bytes, int, int, int] | None = None

    def add(self, fetched: Fetched) -> bool:
        """Take one provider's answer; True once a result has been accepted."""
        if fetched.blob is None:
            self.errors.append(fetched.error)
            return False
        where = f"provider '{fetched.label}'"
        if not erasure.is_shard(fetched.blob):
            return self._try(fetched.blob, where)
        try:
            shard = erasure.parse(fetched.blob)
        except IntegrityError as exc:
            self.errors.append(f"{where}: {exc}")
            return False
        self.sets.setdefault(shard.encoding, {}).setdefault(shard.index, (fetched.label, shard))
        return self._decode()

    def _try(self, sealed: bytes, where: str,
             encoding: tuple[bytes, int, int, int] | None = None) -> bool:
        try:
            self.result = self.accept(sealed)
        except IntegrityError as exc:
            message = str(exc).removeprefix(f"chunk {self.chunk_id.hex()[:12]}: ")
            self.errors.append(f"{where}: {message}")
            return False
        self.sealed, self.encoding = sealed, encoding
        return True

    def _decode(self) -> bool:
        for encoding, group in self.sets.items():
            k = encoding[1]
            for combo in itertools.combinations(sorted(group), k):
                if (encoding, combo) in self._tried:
                    continue
                if len(self._tried) >= MAX_DECODE_TRIES:
                    return False
                self._tried.add((encoding, combo))
                sealed = erasure.decode([group[i][1] for i in combo])
                where = f"shards {','.join(map(str, combo))} of {k}+{encoding[2]}"
                if self._try(sealed, where, encoding):
                    return True
        return False

    def needed(self) -> int:
        """How many objects to fetch next: what the fullest shard set lacks, else one."""
        lacking = [enc[1] - len(group) for enc, group in self.sets.items()]
        short = [n for n in lacking if n > 0]
        return min(short) if short else 1

    def failure(self) -> str:
        """Why no result came out, in one line."""
        notes = list(self.errors)
        for (_set, k, m, _length), group in self.sets.items():
            if len(group) < k:
                notes.append(f"only {len(group)} of the {k} shards needed ({k}+{m})")
        return f"chunk {self.chunk_id.hex()[:12]}: " + "; ".join(notes or ["no copy"])


class WriteOnlySealer:
    """A write-only client's sealer: seals with this process's data key (made, sealed to
    the recipient and stored on first use) and refuses to open anything."""

    def __init__(self, session_key: Callable[[], tuple[int, bytes]]) -> None:
        self._session_key = session_key
        self._sealer: crypto.ChunkSealer | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never print key bytes
        return "WriteOnlySealer()"

    def _get(self) -> crypto.ChunkSealer:
        with self._lock:
            if self._sealer is None:
                key_id, key = self._session_key()
                self._sealer = crypto.ChunkSealer({key_id: key}, key_id)
            return self._sealer

    @property
    def current_key_id(self) -> int:
        return self._get().current_key_id

    @property
    def key_ids(self) -> list[int]:
        return []

    def seal(self, chunk_id: bytes, payload: bytes | memoryview, compression: str = "") -> bytes:
        return self._get().seal(chunk_id, payload, compression)

    def open(self, chunk_id: bytes, blob: bytes | memoryview) -> tuple[crypto.ChunkHeader, bytes]:
        raise WriteOnlyError()


class ChunkStore:
    """Stores and loads chunks for one repository; every method is safe from many threads."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.keys = repo.keys
        self.manifest = repo.manifest
        self.providers = repo.providers
        self.compressor = repo.compressor
        self.sealer: crypto.ChunkSealer | WriteOnlySealer
        if self.keys.write_only:
            self.sealer = WriteOnlySealer(repo.session_data_key)
        else:
            self.sealer = crypto.ChunkSealer(self.keys.data_keys, self.keys.current_key_id,
                                             resolve=repo.resolve_data_key)
        #: Providers whose last read failed (not "missing": unreachable): read them last, so
        #: one dead cloud costs its retry budget once, not once per chunk.
        self._failing: set[str] = set()

    @property
    def distribution(self) -> DistributionPolicy:
        """Built on first write: reading must work with a lost provider taken out of the
        config, even when that leaves too few for the policy to place new chunks."""
        return self.repo.distribution

    @cached_property
    def _read_hint(self) -> Redundancy:
        """How chunks are probably laid out: decides how many objects the first read asks
        for at once (a wrong guess costs a round trip, never correctness)."""
        try:
            return redundancy_of(self.repo.distribution)
        except ConfigError:
            return Redundancy()

    def identify(self, data: bytes | memoryview) -> bytes:
        return crypto.chunk_id(self.keys.id_key, data)

    def seal(self, chunk_id: bytes, data: bytes | memoryview) -> tuple[ChunkRecord, bytes]:
        """Compress (when it pays), encrypt, and choose the providers for a new chunk."""
        payload, compression = data, ""
        if self.compressor is not None and self.worth_compressing(data):
            packed = self.compressor.compress(data)
            if len(packed) <= len(data) * (1 - MIN_SAVING):
                payload, compression = packed, self.compressor.name
        sealed = self.sealer.seal(chunk_id, payload, compression)
        targets = self.distribution.choose(chunk_id, len(sealed))
        record = ChunkRecord(id=chunk_id, size=len(data), stored_size=len(sealed),
                             compression=compression, key_id=self.sealer.current_key_id,
                             providers=tuple(targets), created_at=time.time())
        return record, sealed

    def placements(self, record: ChunkRecord, sealed: bytes) -> list[tuple[str, bytes]]:
        """What each provider of a new chunk stores: the sealed chunk itself (one provider,
        or each copy), or under an erasure policy shard i on ``record.providers[i]``."""
        redundancy = redundancy_of(self.distribution)
        if not redundancy.erasure:
            return [(label, sealed) for label in record.providers]
        shards = erasure.encode(sealed, redundancy.data_shards, redundancy.parity_shards)
        return list(zip(record.providers, shards, strict=True))

    def uploaded_size(self, record: ChunkRecord) -> int:
        """Bytes a new chunk's objects take on all its providers together (copies count
        whole, shards at their own size): what a backup reports as uploaded."""
        redundancy = redundancy_of(self.distribution)
        if not redundancy.erasure:
            return record.stored_size * len(record.providers)
        return erasure.shard_object_size(record.stored_size, redundancy.data_shards) * \
            len(record.providers)

    def worth_compressing(self, data: bytes | memoryview) -> bool:
        """Probe 64 KiB of a large chunk, in slices spread over it: random or
        already-compressed data (media, archives) skips the full compression it would not
        survive anyway. Spread, not the first 64 KiB: a chunk of a mixed file that starts
        random and goes on as text was stored raw (11 MiB lost on the 1 GB benchmark tree,
        against 1.5 MiB with four slices)."""
        if len(data) < 4 * SAMPLE or self.compressor is None:
            return True
        view, step, size = memoryview(data), len(data) // SAMPLE_SLICES, SAMPLE // SAMPLE_SLICES
        sample = b"".join(view[i * step:i * step + size] for i in range(SAMPLE_SLICES))
        return len(self.compressor.compress(sample)) <= SAMPLE * (1 - MIN_SAVING)

    def put(self, data: bytes | memoryview) -> StoredChunk:
        """Store one chunk synchronously unless the manifest has it (the simple path; bulk
        work goes through ``pipeline.ChunkUploader``)."""
        chunk_id = self.identify(data)
        if self.manifest.has_chunk(chunk_id):
            return StoredChunk(chunk_id, len(data), None)
        record, sealed = self.seal(chunk_id, data)
        self.store_objects(chunk_id, self.placements(record, sealed))
        return StoredChunk(chunk_id, len(data), record)

    def store_objects(self, chunk_id: bytes, placements: list[tuple[str, bytes]]) -> None:
        """Write a chunk's objects (copies or shards) to their providers, in parallel."""
        key = chunk_key(chunk_id)

        def store(label: str, blob: bytes) -> None:
            with_retries(f"storing on provider '{label}'", self.providers[label].put, key, blob)

        if len(placements) == 1:
            store(*placements[0])
            return
        for future in [_fetch_pool().submit(store, *p) for p in placements]:
            future.result()

    # -- reading -------------------------------------------------------------------------

    def fetch(self, record: ChunkRecord, label: str) -> Fetched:
        """One provider's object of a chunk (its bytes of a pack, for a packed chunk);
        failures are described, not raised."""
        provider = self.providers.get(label)
        if provider is None:
            return Fetched(label, error=f"provider '{label}' is not configured",
                           configured=False)
        what = f"reading from provider '{label}'"
        try:
            if record.pack is None:
                blob = with_retries(what, provider.get, chunk_key(record.id))
            else:
                blob = with_retries(what, provider.get_range, pack_key(record.pack),
                                    record.offset, record.stored_size)
        except ObjectNotFound:
            return Fetched(label, error=f"missing on provider '{label}'")
        except StorageError as exc:
            self._failing.add(label)
            return Fetched(label, error=str(exc))
        self._failing.discard(label)
        if record.pack is not None and len(blob) != record.stored_size:
            return Fetched(label, error=f"read of its bytes in a pack on provider '{label}' "
                                        "came back short (pack cut short?)")
        return Fetched(label, blob)

    def failing(self, label: str) -> bool:
        """Whether the provider's last read failed for another reason than a missing object."""
        return label in self._failing

    def mark_failing(self, label: str) -> None:
        """The provider is known to be unreachable (e.g. its ``check`` failed)."""
        self._failing.add(label)

    def fetch_many(self, record: ChunkRecord, labels: list[str], *,
                   skip_failing: bool = False) -> Iterator[Fetched]:
        """Several providers' objects of a chunk, fetched in parallel, as they arrive.

        ``skip_failing`` answers for providers known to be unreachable without asking them
        (and waiting out the retry budget once per chunk)."""
        if skip_failing:
            for label in [label for label in labels if label in self._failing]:
                yield Fetched(label, error=f"provider '{label}' is unreachable")
            labels = [label for label in labels if label not in self._failing]
        if len(labels) == 1:
            yield self.fetch(record, labels[0])
            return
        futures = [_fetch_pool().submit(self.fetch, record, label) for label in labels]
        for future in as_completed(futures):
            yield future.result()

    def read_order(self, record: ChunkRecord) -> list[str]:
        """Providers to read a chunk from: rotated by chunk id so the reads of a restore
        spread over every copy, with providers that just failed last."""
        labels = list(record.providers)
        if len(labels) > 1:
            start = record.id[0] % len(labels)
            labels = labels[start:] + labels[:start]
            failing = self._failing
            labels.sort(key=lambda label: label in failing)
        return labels

    def assemble(self, record: ChunkRecord, accept: Callable[[bytes], T]) -> ChunkAssembler[T]:
        """Read a chunk until ``accept`` takes a copy or a decoded set of shards.

        The first wave asks for as many objects as the configured policy needs (k shards
        in parallel under Erasure, one copy otherwise); each later wave asks for what is
        still lacking. ``IntegrityError`` naming every failure if nothing is accepted.
        """
        assembler = ChunkAssembler(record.id, accept)
        order = self.read_order(record)
        hint = self._read_hint
        want = min(hint.data_shards, len(order)) if hint.erasure else 1
        while order:
            wave, order = order[:max(1, want)], order[max(1, want):]
            for fetched in self.fetch_many(record, wave):
                if assembler.add(fetched):
                    return assembler
            want = assembler.needed()
        raise IntegrityError(assembler.failure())

    def authentic(self, chunk_id: bytes, sealed: bytes) -> bytes:
        """``sealed`` if it passes AES-GCM for this chunk id, else ``IntegrityError``."""
        self.sealer.open(chunk_id, sealed)
        return sealed

    def fetch_sealed(self, record: ChunkRecord) -> bytes:
        """An authentic sealed chunk: a copy, or one decoded from shards, that AES-GCM
        accepts for this id (a damaged or missing copy or shard is passed over)."""
        result = self.assemble(record, lambda sealed: self.authentic(record.id, sealed)).result
        assert result is not None
        return result

    def open(self, chunk_id: bytes, sealed: bytes, *, check_id: bool = True) -> bytes:
        """Authenticate, decrypt, decompress and re-check the keyed id of a sealed chunk.

        ``check_id=False`` skips the last step, an HMAC-SHA256 over the plaintext that is
        about half the CPU of a read. The AES-GCM tag already proves that a key holder
        sealed exactly these bytes for this id (the id is in the associated data), so the
        re-check only guards against a writer's own bug; restore and verify keep it, the
        S3 gateway's GETs skip it.
        """
        header, payload = self.sealer.open(chunk_id, sealed)
        if header.compression:
            compressor = self.repo.compressor_named(header.compression)
            payload = compressor.decompress(payload, max_size=MAX_CHUNK_SIZE)
        if check_id and crypto.chunk_id(self.keys.id_key, payload) != chunk_id:
            raise IntegrityError(f"chunk {chunk_id.hex()[:12]}: content does not match its id")
        return payload

    def get(self, record: ChunkRecord, *, check_id: bool = True) -> bytes:
        """The plaintext of a recorded chunk, authenticated (see ``open``), from whichever
        copy or shards of it are sound."""
        result = self.assemble(
            record, lambda sealed: self.open(record.id, sealed, check_id=check_id)).result
        assert result is not None
        return result


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _fetch_pool() -> ThreadPoolExecutor:
    """The shared pool for one chunk's parallel reads and writes (its tasks never wait on
    it themselves, so callers running in other pools cannot deadlock it)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(SHARD_FETCH_THREADS, thread_name_prefix="enigma-shard")
        return _pool


#: No chunker may emit more than this; bounds decompression output (zip bombs).
MAX_CHUNK_SIZE = 64 * 1024 * 1024
