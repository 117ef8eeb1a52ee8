"""Group commit: PUTs that finish together share one storage sync and one transaction.

Every PUT must make its chunks durable (a provider ``sync``), record them and write its
object row, in that order. Done per request, that is a sync and two fsynced SQLite
transactions for each 4 KiB object, and the manifest lock serialises them all. Here the
first request to arrive commits for everyone waiting (leader/follower, no extra thread):
one ``sync``, then one ``apply_batch`` holding ``add_chunks`` for every new chunk and a
``put_object`` per request. While it runs, the next requests queue up and the next
leader takes them all, so the batch grows with the load and costs nothing when idle.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from enigma.manifest import ChunkRecord, Manifest, ObjectRecord
from enigma.pipeline import ChunkUploader


@dataclass
class _Entry:
    chunks: list[ChunkRecord]
    obj: ObjectRecord | None
    done: bool = False
    error: BaseException | None = None


class GroupCommit:
    """Commits (chunk records, object) pairs of many threads in shared transactions."""

    def __init__(self, uploader: ChunkUploader, manifest: Manifest) -> None:
        self.uploader = uploader
        self.manifest = manifest
        self._cond = threading.Condition()
        self._queue: list[_Entry] = []
        self._leading = False
        self.batches = 0  # how many transactions ran (tests and metrics read it)

    def commit(self, chunks: list[ChunkRecord], obj: ObjectRecord | None) -> None:
        """Record ``chunks`` (stored already) and then write ``obj``, durably.

        Returns once both are committed; raises the error of this request's part only
        (a bucket deleted meanwhile fails its own PUT, not the others of the batch).
        """
        entry = _Entry(chunks, obj)
        with self._cond:
            self._queue.append(entry)
            while self._leading and not entry.done:
                self._cond.wait()
            if not entry.done:
                self._leading = True
                batch, self._queue = self._queue, []
        if not entry.done:
            try:
                self._run(batch)
            finally:
                with self._cond:
                    for item in batch:
                        item.done = True
                    self._leading = False
                    self._cond.notify_all()
        if entry.error is not None:
            raise entry.error

    def _run(self, batch: list[_Entry]) -> None:
        records = {r.id: r for entry in batch for r in entry.chunks}
        operations: list[tuple[str, list]] = []
        if records:
            operations.append(("add_chunks", [list(records.values())]))
        objects = [entry for entry in batch if entry.obj is not None]
        operations += [("put_object", [entry.obj]) for entry in objects]
        try:
            if records:
                self.uploader.sync()  # chunks durable before the manifest names them
            results = self.manifest.apply_batch(operations) if operations else []
        except BaseException as exc:  # nothing of the batch committed
            self.uploader.abandoned(records)
            for entry in batch:
                entry.error = exc
            return
        self.batches += 1
        failed = results.pop(0) if records else None
        if failed is None:
            self.uploader.recorded(records)
        else:
            self.uploader.abandoned(records)
        for entry in batch:  # a request without an object only wanted its chunks recorded
            entry.error = failed
        for entry, result in zip(objects, results, strict=True):
            entry.error = result  # its own outcome (missing chunks fail it by themselves)
