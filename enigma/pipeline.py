"""Parallel chunk processing with bounded memory, shared by backup, restore and verify.

hashlib/hmac, AES-GCM, zstd and pyfastcdc release the GIL, so plain threads scale with
cores. CPU work (id, compress, seal; open, decompress, check) runs in a pool sized to the
cores; uploads run in one pool per provider, so a slow cloud does not starve a fast disk.
A byte budget bounds what is in flight: memory stays flat whatever the file or tree size.
"""

from __future__ import annotations

import os
import threading
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from enigma import erasure
from enigma.chunkstore import ChunkStore, StoredChunk, chunk_key, with_retries
from enigma.errors import StorageError
from enigma.manifest import ChunkRecord
from enigma.packer import Member, Packer
from enigma.packs import PACK_CHUNK_LIMIT
from enigma.plugins.distribution import redundancy_of
from enigma.telemetry import TELEMETRY

T = TypeVar("T")
R = TypeVar("R")

#: Bytes of plaintext in flight at once (each may briefly exist twice: plain and sealed).
DEFAULT_BUDGET = 24 * 1024 * 1024


def cpu_count() -> int:
    """Cores this process may use (affinity-aware, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class ByteBudget:
    """A counting semaphore over bytes; one oversized request may pass when nothing else is in."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()

    def _fits(self, n: int) -> bool:
        return self.used == 0 or self.used + n <= self.limit

    def acquire(self, n: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._fits(n))
            self.used += n

    def try_acquire(self, n: int) -> bool:
        with self._cond:
            if not self._fits(n):
                return False
            self.used += n
            return True

    def release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


#: A chunk's bytes, or a callable that produces them on a worker thread.
Chunkish = bytes | memoryview | Callable[[], bytes]


class KnownChunks:
    """A compact prefilter over the ids the manifest holds: 8 bytes per chunk, sorted,
    plus the prefixes of the chunks recorded since (``add``).

    A miss proves a chunk is new without asking SQLite (the common case in a first
    backup); a hit is confirmed by the manifest. A million chunks cost 8 MB, and each
    chunk this run records about 60 bytes more.
    """

    def __init__(self, ids: Iterable[bytes]) -> None:
        self._prefixes = array("Q", sorted(int.from_bytes(i[:8], "big") for i in ids))
        self._added: set[int] = set()

    def add(self, ids: Iterable[bytes]) -> None:
        """Chunks the manifest holds now: a later copy of one must find it there."""
        self._added.update(int.from_bytes(i[:8], "big") for i in ids)

    def might_have(self, chunk_id: bytes) -> bool:
        prefix = int.from_bytes(chunk_id[:8], "big")
        if prefix in self._added:
            return True
        at = bisect_left(self._prefixes, prefix)
        return at < len(self._prefixes) and self._prefixes[at] == prefix


class _Completion:
    """Resolves a chunk's future once every provider it goes to has stored it."""

    def __init__(self, owner: ChunkUploader, record: ChunkRecord,
                 result: Future[StoredChunk]) -> None:
        self.owner = owner
        self.record = record
        self.result = result
        self.remaining = len(record.providers)
        self.lock = threading.Lock()

    def stored(self) -> None:
        with self.lock:
            self.remaining -= 1
            last = self.remaining == 0
        if last and not self.result.done():
            TELEMETRY.chunk_written(self.record.size, self.record.stored_size)
            self.result.set_result(StoredChunk(self.record.id, self.record.size, self.record))

    def failed(self, exc: BaseException) -> None:
        self.owner._fail(self.result, exc, self.record.id)


class ChunkUploader:
    """Turns plaintext chunks into stored chunks in parallel; ``submit`` returns futures.

    A chunk whose id is already stored, or already on its way, is not stored twice. Ids
    stay "in flight" until ``recorded`` says the manifest has them, so a duplicate that
    arrives between upload and manifest write is still recognised. Small chunks travel in
    groups (one CPU job and one upload job per provider per group), so 20,000 small files
    do not cost 20,000 thread hand-offs each way.
    """

    def __init__(self, store: ChunkStore, *, workers: int | None = None,
                 upload_threads: int | None = None,
                 budget: int = DEFAULT_BUDGET, prefilter: bool = True,
                 pack_size: int = 0) -> None:
        """``prefilter=False`` asks the manifest about every chunk instead of using a
        snapshot of its ids taken now: right for a long-running server, whose snapshot
        would go stale as backups and uploads add chunks.

        ``pack_size`` > 0 puts chunks sealed smaller than ``PACK_CHUNK_LIMIT`` into pack
        objects of about that many bytes (``enigma.packer``), except under an erasure
        policy, whose shards are objects of their own. A pack is shipped when full or
        when no chunk is left being processed, so a caller waiting on a future never
        waits for more input."""
        self.store = store
        store.distribution  # noqa: B018 - a policy that cannot place chunks fails now, once
        self.manifest = store.manifest
        self.budget = ByteBudget(budget)
        self.known = KnownChunks(self.manifest.iter_chunk_ids()) if prefilter else None
        self.cpu = ThreadPoolExecutor(workers or cpu_count(), thread_name_prefix="enigma-cpu")
        self.uploads = {
            label: ThreadPoolExecutor(upload_threads or provider.upload_concurrency,
                                      thread_name_prefix=f"enigma-up-{label}")
            for label, provider in store.providers.items()}
        self._inflight: dict[bytes, Future[StoredChunk]] = {}
        self._lock = threading.Lock()
        #: Per provider, chunk objects found there that the manifest did not know when a
        #: resumed backup started (see ``resume_from``); their puts may be skipped.
        self.maybe_stored: dict[str, set[str]] = {}
        #: Placements not uploaded because a whole object was already there.
        self.reused = 0
        self.packer: Packer | None = None
        if pack_size > 0 and not redundancy_of(store.distribution).erasure:
            self.packer = Packer(store.sealer.seal, self._ship_pack, target=pack_size)
        #: Groups submitted to the CPU pool and not finished: 0 means the pipeline is idle.
        self._busy = 0

    def submit(self, data: bytes | memoryview) -> Future[StoredChunk]:
        """Queue one chunk; see ``submit_many``."""
        return self.submit_many([data])[0]

    def submit_many(self, items: list[Chunkish], sizes: list[int] | None = None
                    ) -> list[Future[StoredChunk]]:
        """Queue chunks as one group (blocks while the byte budget is spent).

        An item is the chunk's bytes (kept unchanged by the caller until its future is
        done) or a loader returning them, run on a worker: small files are then opened and
        read in parallel, off the thread that walks the tree. A loader's ``OSError`` ends
        up in its future. ``sizes`` (for loaders) feeds the memory budget.
        """
        total = sum(sizes) if sizes is not None else sum(len(d) for d in items)  # type: ignore[arg-type]
        self.budget.acquire(total)
        futures: list[Future[StoredChunk]] = [Future() for _ in items]
        left = [len(items)]
        lock = threading.Lock()

        def release(_done: Future[StoredChunk]) -> None:
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                self.budget.release(total)

        for future in futures:
            future.add_done_callback(release)
        with self._lock:
            self._busy += 1
        self.cpu.submit(self._process_group, items, futures)
        return futures

    def _process_group(self, items: list[Chunkish], futures: list[Future[StoredChunk]]
                       ) -> None:
        try:
            self._process(items, futures)
        finally:
            with self._lock:
                self._busy -= 1
                idle = self._busy == 0
            if idle and self.packer is not None:
                self.packer.flush()

    def _claim(self, chunk_id: bytes, result: Future[StoredChunk]
               ) -> tuple[bool, Future[StoredChunk] | None]:
        """(is this chunk new, the future of an identical chunk already on its way)."""
        with self._lock:
            earlier = self._inflight.get(chunk_id)
        if earlier is not None:
            return False, earlier
        if ((self.known is None or self.known.might_have(chunk_id))
                and self.manifest.has_chunk(chunk_id)):
            return False, None
        with self._lock:
            earlier = self._inflight.setdefault(chunk_id, result)
        return earlier is result, None if earlier is result else earlier

    def store_now(self, data: bytes | memoryview) -> StoredChunk:
        """Store one small chunk on the calling thread, with the same dedup as ``submit``.

        For a server's small objects the two thread hand-offs of ``submit`` (CPU pool,
        then upload pool) cost more than identifying, sealing and writing 4 KiB; the
        request's own worker thread does it here instead. A duplicate of a chunk still in
        flight waits for it, as ``submit``'s future would.
        """
        result: Future[StoredChunk] = Future()
        self._process([data], [result], inline=True)
        return result.result()

    def _process(self, items: list[Chunkish], futures: list[Future[StoredChunk]], *,
                 inline: bool = False) -> None:
        groups: dict[str, list[tuple[str, bytes, _Completion]]] = {}
        for item, result in zip(items, futures, strict=True):
            chunk_id: bytes | None = None
            try:
                data = item() if callable(item) else item
                chunk_id = self.store.identify(data)
                fresh, earlier = self._claim(chunk_id, result)
                if not fresh:
                    TELEMETRY.chunk_deduplicated(len(data))
                    self._duplicate(chunk_id, len(data), earlier, result)
                    continue
                record, sealed = self.store.seal(chunk_id, data)
                completion = _Completion(self, record, result)
                if self.packer is not None and not inline and len(sealed) < PACK_CHUNK_LIMIT:
                    self.packer.add(record, sealed, completion)
                    continue
                # The sealed chunk for each copy, or (Erasure) each provider's own shard.
                for label, blob in self.store.placements(record, sealed):
                    groups.setdefault(label, []).append((chunk_key(chunk_id), blob,
                                                         completion))
            except BaseException as exc:  # handed to the waiting caller
                self._fail(result, exc, chunk_id)  # and no longer "in flight"
        del items
        for label, group in groups.items():
            if inline:
                self._put_group(label, group)
            else:
                self.uploads[label].submit(self._put_group, label, group)

    def resume_from(self, maybe_stored: dict[str, set[str]]) -> None:
        """Skip uploading objects an interrupted run already stored (keys per provider).

        A killed backup leaves chunk objects it stored but had not recorded yet; a resumed
        one lists them first and, for those, checks the object is whole (exactly the
        sealed length: sealing the same chunk again gives the same length, only the nonce
        differs) instead of writing it again.
        """
        self.maybe_stored = maybe_stored

    def _already_stored(self, label: str, key: str, size: int) -> bool:
        """Whether ``label`` holds ``key`` whole; any doubt means "upload it again"."""
        if key not in self.maybe_stored.get(label, ()):
            return False
        provider = self.store.providers[label]
        try:
            # A range starting at the last byte holds exactly one byte iff the size is right.
            tail = with_retries(f"reading from provider '{label}'", provider.get_range,
                                key, size - 1, 2)
        except StorageError:
            return False
        return len(tail) == 1

    def _put_group(self, label: str, group: list[tuple[str, bytes, _Completion]]) -> None:
        provider = self.store.providers[label]
        for key, sealed, completion in group:
            try:
                # Never for shards: a leftover shard belongs to another encoding (its own
                # nonce), and mixing two encodings' shards would leave fewer than k+m of one.
                if not erasure.is_shard(sealed) and \
                        self._already_stored(label, key, len(sealed)):
                    with self._lock:
                        self.reused += 1
                    completion.stored()
                    continue
                with_retries(f"storing on provider '{label}'", provider.put, key, sealed)
            except BaseException as exc:  # handed to the waiting caller
                completion.failed(exc)
            else:
                completion.stored()

    def _ship_pack(self, labels: tuple[str, ...], key: str, blob: bytes,
                   members: list[Member]) -> None:
        for label in labels:
            self.uploads[label].submit(self._put_pack, label, key, blob, members)

    def _put_pack(self, label: str, key: str, blob: bytes, members: list[Member]) -> None:
        try:
            with_retries(f"storing on provider '{label}'", self.store.providers[label].put,
                         key, blob)
        except BaseException as exc:  # handed to every chunk waiting for the pack
            for member in members:
                member.failed(exc)
        else:
            for member in members:
                member.stored()

    def _duplicate(self, chunk_id: bytes, size: int, earlier: Future[StoredChunk] | None,
                   result: Future[StoredChunk]) -> None:
        duplicate = StoredChunk(chunk_id, size, None)
        if earlier is None:
            result.set_result(duplicate)
            return

        def follow(done: Future[StoredChunk]) -> None:
            if done.cancelled():
                result.cancel()
            elif done.exception() is not None:
                result.set_exception(done.exception())
            else:
                result.set_result(duplicate)

        earlier.add_done_callback(follow)

    def _fail(self, result: Future[StoredChunk], exc: BaseException,
              chunk_id: bytes | None = None) -> None:
        if chunk_id is not None:
            with self._lock:
                if self._inflight.get(chunk_id) is result:
                    del self._inflight[chunk_id]
        if not result.done():
            result.set_exception(exc)

    def pending_record(self, chunk_id: bytes) -> ChunkRecord | None:
        """The record of a chunk stored here but not yet ``recorded``, if there is one.

        A caller whose chunk was a duplicate of one still in flight gets no record of its
        own; with this it can record the chunk itself (``add_chunks`` is idempotent)
        instead of waiting for the request that stored it. None means the chunk is not in
        flight: it was recorded already, or never stored.
        """
        with self._lock:
            future = self._inflight.get(chunk_id)
        if future is None or not future.done() or future.cancelled() \
                or future.exception() is not None:
            return None
        return future.result().record

    def recorded(self, ids: Iterable[bytes]) -> None:
        """The manifest now holds these chunks: dedup can rely on it from here on (the
        prefilter learns them, or a later copy would pass it as new and be stored again,
        an unused second copy in a pack)."""
        ids = list(ids)
        if self.known is not None:
            with self._lock:
                self.known.add(ids)
        self._forget(ids)

    def abandoned(self, ids: Iterable[bytes]) -> None:
        """These stored chunks will not be recorded (their manifest write failed).

        They are orphans now, which ``enigma gc`` may delete; a later duplicate must
        therefore be stored again, not matched against the stale upload.
        """
        self._forget(ids)

    def _forget(self, ids: Iterable[bytes]) -> None:
        with self._lock:
            for chunk_id in ids:
                self._inflight.pop(chunk_id, None)

    def sync(self) -> None:
        """Make every stored chunk durable before the manifest mentions it."""
        for label, provider in self.store.providers.items():
            with_retries(f"syncing provider '{label}'", provider.sync)

    def close(self, *, cancel: bool = False) -> None:
        self.cpu.shutdown(wait=True, cancel_futures=cancel)
        for pool in self.uploads.values():
            pool.shutdown(wait=True, cancel_futures=cancel)
        if cancel:
            for future in list(self._inflight.values()):
                if not future.done():
                    future.cancel()


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, size: Callable[[T], int],
                budget: int = DEFAULT_BUDGET, workers: int | None = None,
                ) -> Iterator[tuple[T, Future[R]]]:
    """Run ``fn`` over ``items`` in parallel, yielding ``(item, done future)`` in input order.

    Read-ahead is bounded by ``budget`` bytes (``size(item)`` each), so a restore of a
    huge tree fetches ahead only as much as fits; failures stay in their future, so the
    caller decides per item what an error means.
    """
    window: deque[tuple[T, Future[R], int]] = deque()
    gate = ByteBudget(budget)
    with ThreadPoolExecutor(workers or max(4, 2 * cpu_count()),
                            thread_name_prefix="enigma-fetch") as pool:
        try:
            for item in items:
                n = size(item)
                while not gate.try_acquire(n):
                    yield _finish(window.popleft(), gate)
                window.append((item, pool.submit(fn, item), n))
            while window:
                yield _finish(window.popleft(), gate)
        finally:
            for _item, future, _n in window:
                future.cancel()


def _finish(entry: tuple[T, Future[Any], int], gate: ByteBudget) -> tuple[T, Future[Any]]:
    item, future, n = entry
    future.exception()  # wait for it, whatever the outcome
    gate.release(n)
    return item, future
