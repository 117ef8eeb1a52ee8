"""Objects in and out of the repository through the core pipeline (runs on worker threads).

A PUT cuts the body with the repository's chunker as it streams in, hands each chunk to
the shared ``ChunkUploader`` (so it is deduplicated against CLI backups and other objects,
compressed, sealed and distributed like any backup chunk), then follows the backup's
order: make the chunks durable (``sync``), record them (``add_chunks``), tell the
uploader (``recorded``), and only then write the object row that references them; PUTs
finishing together share that sync and transaction (``GroupCommit``).
A GET fetches and opens the chunks a range needs, several ahead in parallel.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future

from enigma.chunkstore import ChunkStore, StoredChunk
from enigma.errors import IntegrityError
from enigma.manifest import ChunkRecord, ChunkRef, ObjectRecord
from enigma.memory import FreeMemoryReleaser
from enigma.pipeline import ChunkUploader, ordered_map
from enigma.repository import Repository
from enigma_gateway_s3.body import Payload
from enigma_gateway_s3.commit import GroupCommit

#: Read-ahead of one GET (bytes of plaintext chunks fetched ahead of the client).
GET_BUDGET = 8 * 1024 * 1024
GET_WORKERS = 4
#: Plaintext chunks of all PUTs on their way to storage at once (the CLI uses 24 MiB; the
#: server also holds each PUT's chunker buffer, so it keeps less in flight).
PUT_BUDGET = 8 * 1024 * 1024
#: Buffer between the request body and the chunker.
READ_BUFFER = 1024 * 1024


class ObjectStore:
    """The gateway's data path over one repository; every method is thread-safe."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.manifest = repo.manifest
        self.chunker = repo.chunker
        self.chunks = ChunkStore(repo)
        # No start-up snapshot of chunk ids: a server lives for weeks while backups and its
        # own PUTs add chunks, so each chunk is looked up in the manifest instead.
        self.uploader = ChunkUploader(self.chunks, prefilter=False, budget=PUT_BUDGET)
        self.committer = GroupCommit(self.uploader, self.manifest)
        self.releaser = FreeMemoryReleaser()

    def close(self) -> None:
        self.uploader.close()

    # -- PUT ---------------------------------------------------------------------------

    def put(self, bucket: str, key: str, body: Payload, content_type: str,
            metadata: dict[str, str]) -> ObjectRecord:
        """Store a streamed body as an object; nothing is visible unless all of it worked."""
        futures: list[Future[StoredChunk]] = []
        refs: list[ChunkRef] = []
        offset = 0
        error: BaseException | None = None
        try:
            small = self._one_chunk(body)
            for piece in self._pieces(body):
                if small:  # one chunk: no thread hand-offs (see ChunkUploader.store_now)
                    done: Future[StoredChunk] = Future()
                    done.set_result(self.uploader.store_now(piece))
                    futures.append(done)
                else:
                    futures.append(self.uploader.submit(piece))
                refs.append(ChunkRef(b"", offset, len(piece)))
                offset += len(piece)
            body.finish()
        except BaseException as exc:  # still record what was stored, then re-raise
            error = exc
        if len(futures) > 1:
            self.releaser.maybe_release()  # this PUT's chunk buffers are free now
        stored, records = self._settle(futures, error)
        for ref, done in zip(refs, stored, strict=True):
            ref.chunk_id = done.chunk_id
        record = ObjectRecord(bucket=bucket, key=key, size=offset, etag=body.etag,
                              created_at=time.time(), content_type=content_type,
                              metadata=metadata, chunks=refs)
        self.committer.commit(records, record)
        return record

    def put_spliced(self, bucket: str, key: str, segments: Iterable[ChunkRef | bytes],
                    etag: Callable[[], str]) -> ObjectRecord:
        """Store an object made of chunks already stored (referenced, never read again) and
        new bytes (cut and stored like a PUT body), in the order given.

        A ranged part copy stores only the partial chunks at its edges this way. ``etag``
        is called once ``segments`` is exhausted (the caller hashes as it reads). Like
        ``put``, nothing is visible unless all of it worked, and stored chunks are recorded
        even then (refcount 0: gc reclaims them).
        """
        refs: list[ChunkRef] = []
        pending: list[tuple[ChunkRef, Future[StoredChunk]]] = []
        offset = 0
        error: BaseException | None = None
        try:
            for segment in segments:
                if isinstance(segment, ChunkRef):
                    refs.append(ChunkRef(segment.chunk_id, offset, segment.length))
                    offset += segment.length
                    continue
                for piece in self.chunker.chunks_of(segment):
                    ref = ChunkRef(b"", offset, len(piece))
                    pending.append((ref, self.uploader.submit(piece)))
                    refs.append(ref)
                    offset += len(piece)
        except BaseException as exc:  # still record what was stored, then re-raise
            error = exc
        stored, records = self._settle([future for _ref, future in pending], error)
        for (ref, _future), done in zip(pending, stored, strict=True):
            ref.chunk_id = done.chunk_id
        record = ObjectRecord(bucket=bucket, key=key, size=offset, etag=etag(),
                              created_at=time.time(), chunks=refs)
        self.committer.commit(records, record)
        return record

    def _settle(self, futures: list[Future[StoredChunk]], error: BaseException | None
                ) -> tuple[list[StoredChunk], list[ChunkRecord]]:
        """Wait for every chunk: (what was stored, the records to commit with the object).

        On ``error`` (or a failed chunk) the stored chunks are still recorded (refcount 0:
        gc reclaims them) and the first error is raised; no object is written.
        """
        stored: list[StoredChunk] = []
        for future in futures:
            try:
                stored.append(future.result())
            except BaseException as exc:
                error = error or exc
        records = self._records_of(stored)
        if error is not None:
            if records:
                self.committer.commit(records, None)
            raise error
        return stored, records

    def _one_chunk(self, body: Payload) -> bool:
        """Whether the body is announced small enough to be one chunk."""
        return body.length is not None and body.length <= self.chunker.single_chunk_limit

    def _pieces(self, body: Payload) -> Iterator[bytes]:
        """The body's chunks; a body announced small enough for one chunk skips the cutter."""
        if self._one_chunk(body):
            data = body.readall()  # bounded: a body longer than announced raises
            if data:
                yield data
            return
        for piece in self.chunker.chunks(io.BufferedReader(body, READ_BUFFER)):
            yield bytes(piece)

    def _records_of(self, stored: list[StoredChunk]) -> list[ChunkRecord]:
        """The records this PUT must commit: its new chunks, and duplicates of chunks that
        another request stored but has not committed yet (``add_chunks`` is idempotent).
        A duplicate with neither is in the manifest already."""
        records: dict[bytes, ChunkRecord] = {}
        for done in stored:
            if done.chunk_id in records:
                continue
            record = done.record or self.uploader.pending_record(done.chunk_id)
            if record is not None:
                records[done.chunk_id] = record
        return list(records.values())

    # -- GET ---------------------------------------------------------------------------

    def _fetch(self, ref: ChunkRef) -> bytes:
        record = self.manifest.get_chunk(ref.chunk_id)
        if record is None:
            raise IntegrityError(f"chunk {ref.chunk_id.hex()[:12]} is not in the manifest")
        return self.chunks.get(record, check_id=False)  # GCM authenticates (see open)

    def read(self, record: ObjectRecord, start: int, end: int) -> Iterator[bytes]:
        """Plaintext bytes ``start..end`` (inclusive) of an object, chunk by chunk."""
        refs = [r for r in record.chunks if r.offset + r.length > start and r.offset <= end]
        if len(refs) == 1:
            pieces: Iterable[tuple[ChunkRef, bytes]] = [(refs[0], self._fetch(refs[0]))]
        else:
            pieces = ((ref, future.result()) for ref, future in ordered_map(
                self._fetch, refs, size=lambda r: r.length, budget=GET_BUDGET,
                workers=GET_WORKERS))
        try:
            for ref, data in pieces:
                if len(data) != ref.length:
                    raise IntegrityError(f"chunk {ref.chunk_id.hex()[:12]} has the wrong size")
                lo = max(start - ref.offset, 0)
                hi = min(end + 1 - ref.offset, ref.length)
                yield data if lo == 0 and hi == ref.length else data[lo:hi]
                del data
        finally:
            if len(refs) > 1:
                pieces = []
                self.releaser.maybe_release()
