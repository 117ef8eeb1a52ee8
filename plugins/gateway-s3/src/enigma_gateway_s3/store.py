"""Objects in and out of the repository through the core pipeline (runs on worker threads).

A PUT cuts the body with the repository's chunker as it streams in, hands each chunk to
the shared ``ChunkUploader`` (so it is deduplicated against CLI backups and other objects,
compressed, sealed and distributed like any backup chunk), then follows the backup's
order: make the chunks durable (``sync``), record them (``add_chunks``), tell the
uploader (``recorded``), and only then write the object row that references them.
A GET fetches and opens the chunks a range needs, several ahead in parallel.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future

from enigma.chunkstore import ChunkStore, StoredChunk
from enigma.errors import IntegrityError
from enigma.manifest import ChunkRecord, ChunkRef, ObjectRecord
from enigma.pipeline import ChunkUploader, ordered_map
from enigma.repository import Repository
from enigma_gateway_s3.body import Payload
from enigma_gateway_s3.errors import S3Error

#: Read-ahead of one GET (bytes of plaintext chunks fetched ahead of the client).
GET_BUDGET = 16 * 1024 * 1024
GET_WORKERS = 8
#: Buffer between the request body and the chunker.
READ_BUFFER = 1024 * 1024
#: How long a PUT waits for a chunk another request is still recording.
RECORD_WAIT = 60.0


class ObjectStore:
    """The gateway's data path over one repository; every method is thread-safe."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.manifest = repo.manifest
        self.chunker = repo.chunker
        self.chunks = ChunkStore(repo)
        # No start-up snapshot of chunk ids: a server lives for weeks while backups and its
        # own PUTs add chunks, so each chunk is looked up in the manifest instead.
        self.uploader = ChunkUploader(self.chunks, prefilter=False)
        # Records stored by the uploader but not yet in the manifest. A PUT whose chunk
        # duplicates one still in flight for another request gets no record back; it takes
        # the record from here (add_chunks is idempotent) rather than waiting for the
        # other request to finish.
        self._pending: dict[bytes, ChunkRecord] = {}
        self._cond = threading.Condition()
        self._record_lock = threading.Lock()

    def close(self) -> None:
        self.uploader.close()

    # -- PUT ---------------------------------------------------------------------------

    def _note(self, future: Future[StoredChunk]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        record = future.result().record
        if record is not None:
            with self._cond:
                self._pending[record.id] = record
                self._cond.notify_all()

    def put(self, bucket: str, key: str, body: Payload, content_type: str,
            metadata: dict[str, str]) -> ObjectRecord:
        """Store a streamed body as an object; nothing is visible unless all of it worked."""
        futures: list[Future[StoredChunk]] = []
        refs: list[ChunkRef] = []
        offset = 0
        error: BaseException | None = None
        try:
            for piece in self.chunker.chunks(io.BufferedReader(body, READ_BUFFER)):
                data = bytes(piece)
                future = self.uploader.submit(data)
                future.add_done_callback(self._note)
                futures.append(future)
                refs.append(ChunkRef(b"", offset, len(data)))
                offset += len(data)
            body.finish()
        except BaseException as exc:  # still record what was stored, then re-raise
            error = exc
        stored: list[bytes] = []
        for future in futures:
            try:
                stored.append(future.result().chunk_id)
            except BaseException as exc:
                error = error or exc
        self._record(stored)
        if error is not None:
            raise error
        for ref, chunk_id in zip(refs, stored, strict=True):
            ref.chunk_id = chunk_id
        record = ObjectRecord(bucket=bucket, key=key, size=offset, etag=body.etag,
                              created_at=time.time(), content_type=content_type,
                              metadata=metadata, chunks=refs)
        self.manifest.put_object(record)
        return record

    def _record(self, ids: Iterable[bytes]) -> None:
        """Make sure every chunk in ``ids`` is durable and in the manifest."""
        wanted = set(ids)
        if not wanted:
            return
        deadline = time.monotonic() + RECORD_WAIT
        with self._record_lock:
            while True:
                with self._cond:
                    take = {i: self._pending[i] for i in wanted if i in self._pending}
                rest = wanted - take.keys()
                missing = rest - self.manifest.known_chunks(rest) if rest else set()
                if not missing:
                    break
                # The request that stored it has not registered its record yet (its
                # callback runs right after ours): wait for it.
                if time.monotonic() > deadline:
                    raise S3Error("InternalError", "a chunk was stored but never recorded")
                with self._cond:
                    self._cond.wait(0.05)
            if take:
                self.uploader.sync()
                self.manifest.add_chunks(list(take.values()))
                self.uploader.recorded(take)
                with self._cond:
                    for chunk_id in take:
                        self._pending.pop(chunk_id, None)

    # -- GET ---------------------------------------------------------------------------

    def _fetch(self, ref: ChunkRef) -> bytes:
        record = self.manifest.get_chunk(ref.chunk_id)
        if record is None:
            raise IntegrityError(f"chunk {ref.chunk_id.hex()[:12]} is not in the manifest")
        return self.chunks.get(record)

    def read(self, record: ObjectRecord, start: int, end: int) -> Iterator[bytes]:
        """Plaintext bytes ``start..end`` (inclusive) of an object, chunk by chunk."""
        refs = [r for r in record.chunks if r.offset + r.length > start and r.offset <= end]
        if len(refs) == 1:
            pieces: Iterable[tuple[ChunkRef, bytes]] = [(refs[0], self._fetch(refs[0]))]
        else:
            pieces = ((ref, future.result()) for ref, future in ordered_map(
                self._fetch, refs, size=lambda r: r.length, budget=GET_BUDGET,
                workers=GET_WORKERS))
        for ref, data in pieces:
            if len(data) != ref.length:
                raise IntegrityError(f"chunk {ref.chunk_id.hex()[:12]} has the wrong size")
            lo = max(start - ref.offset, 0)
            hi = min(end + 1 - ref.offset, ref.length)
            yield data if lo == 0 and hi == ref.length else data[lo:hi]
