"""Chunks in and out of storage: id, dedup, compress, seal, place; fetch, open, check.

The one place that turns plaintext into stored objects and back, shared by backup,
restore, verify and (later) the S3 gateway.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from enigma import crypto
from enigma.errors import IntegrityError, ObjectNotFound, StorageError, TransientStorageError
from enigma.manifest import ChunkRecord
from enigma.repository import Repository

T = TypeVar("T")

#: Seconds a transient storage failure is retried before the operation gives up
#: (``ENIGMA_RETRY_SECONDS`` overrides); each wait is at most MAX_BACKOFF.
DEFAULT_RETRY_SECONDS = 30.0
MAX_BACKOFF = 5.0
#: Keep compression only if it saves at least this fraction (else store raw, read faster).
MIN_SAVING = 0.02
#: Bytes of a large chunk test-compressed to decide whether compressing it pays.
SAMPLE = 64 * 1024


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


def retry_seconds() -> float:
    """How long a transient failure is retried: ``ENIGMA_RETRY_SECONDS``, default 30 s."""
    try:
        return max(0.0, float(os.environ.get("ENIGMA_RETRY_SECONDS", DEFAULT_RETRY_SECONDS)))
    except ValueError:
        return DEFAULT_RETRY_SECONDS


def with_retries(what: str, action: Callable[..., T], *args: Any) -> T:
    """Run a storage call, retrying transient failures with exponential backoff and full
    jitter until the retry budget is spent; permanent failures stop at once. Either way the
    error names ``what`` (e.g. the provider) in one line."""
    budget = retry_seconds()
    started = time.monotonic()
    attempt = 0
    while True:
        try:
            return action(*args)
        except ObjectNotFound:
            raise
        except TransientStorageError as exc:
            attempt += 1
            delay = random.uniform(0, min(MAX_BACKOFF, 0.1 * 2 ** attempt))
            elapsed = time.monotonic() - started
            if elapsed + delay > budget:
                raise StorageError(f"{what}: {exc} (gave up after {attempt} tries in "
                                   f"{elapsed:.1f} s)") from exc
            time.sleep(delay)
        except StorageError as exc:
            raise StorageError(f"{what}: {exc}") from exc


@dataclass
class StoredChunk:
    """The outcome of storing one chunk: its id, and a new record unless it was a duplicate."""

    chunk_id: bytes
    size: int
    record: ChunkRecord | None


class ChunkStore:
    """Stores and loads chunks for one repository; every method is safe from many threads."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.keys = repo.keys
        self.manifest = repo.manifest
        self.providers = repo.providers
        self.compressor = repo.compressor
        self.distribution = repo.distribution
        self.sealer = crypto.ChunkSealer(self.keys.data_keys, self.keys.current_key_id)

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

    def worth_compressing(self, data: bytes | memoryview) -> bool:
        """Probe a large chunk's first 64 KiB: random or already-compressed data (media,
        archives) skips the full compression it would not survive anyway."""
        if len(data) < 4 * SAMPLE or self.compressor is None:
            return True
        sample = memoryview(data)[:SAMPLE]
        return len(self.compressor.compress(sample)) <= SAMPLE * (1 - MIN_SAVING)

    def put(self, data: bytes | memoryview) -> StoredChunk:
        """Store one chunk synchronously unless the manifest has it (the simple path; bulk
        work goes through ``pipeline.ChunkUploader``)."""
        chunk_id = self.identify(data)
        if self.manifest.has_chunk(chunk_id):
            return StoredChunk(chunk_id, len(data), None)
        record, sealed = self.seal(chunk_id, data)
        key = chunk_key(chunk_id)
        for label in record.providers:
            with_retries(f"storing on provider '{label}'", self.providers[label].put, key, sealed)
        return StoredChunk(chunk_id, len(data), record)

    def fetch_sealed(self, record: ChunkRecord) -> bytes:
        """The sealed object from the first provider that has it."""
        errors: list[str] = []
        for label in record.providers:
            provider = self.providers.get(label)
            if provider is None:
                errors.append(f"provider '{label}' is not configured")
                continue
            try:
                return with_retries(f"reading from provider '{label}'", provider.get,
                                    chunk_key(record.id))
            except ObjectNotFound:
                errors.append(f"missing on provider '{label}'")
            except StorageError as exc:
                errors.append(str(exc))
        raise IntegrityError(f"chunk {record.id.hex()[:12]}: " + "; ".join(errors or ["no copy"]))

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
        """The plaintext of a recorded chunk, authenticated (see ``open``)."""
        return self.open(record.id, self.fetch_sealed(record), check_id=check_id)


#: No chunker may emit more than this; bounds decompression output (zip bombs).
MAX_CHUNK_SIZE = 64 * 1024 * 1024
