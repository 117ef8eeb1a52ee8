"""Group commit of gateway PUTs, in-process: shared batches, failure isolation, dedup.

These drive ``ObjectStore.put`` on real threads over a real repository (``enigma init``,
local storage), with no server process. Concurrency is staged with Events and Barriers
only: the first batch's leader is held inside ``uploader.sync`` until the other PUTs are
provably queued in the committer, so what shares a batch is decided by the test, not by
the scheduler.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from enigma_gateway_s3 import sigv4
from enigma_gateway_s3.body import Payload, open_body
from enigma_gateway_s3.store import ObjectStore
from helpers import PASSPHRASE, Enigma, chunk_files

from enigma.chunkstore import StoredChunk
from enigma.config import load_config
from enigma.errors import NotFoundError, StorageError
from enigma.manifest import BucketRecord, ObjectRecord
from enigma.plugin_manager import PluginManager
from enigma.repository import Repository

#: Upper bound on any staged wait: reached only when the code under test hangs.
TIMEOUT = 30.0
KiB = 1024
MiB = 1024 * KiB
#: Smaller CDC than the 1/4/16 MiB default, so a few MiB make a dozen chunks.
CHUNKING = "[enigma.chunk_strategy.Cdc]\nmin_size = 65536\navg_size = 262144\nmax_size = 1048576\n"
LIVE = "live"


# -- fixtures and helpers ---------------------------------------------------------------


@dataclass
class Rig:
    runner: Enigma
    repo: Repository
    store: ObjectStore


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """A repository made by the real CLI, opened in-process as ``enigma serve`` opens it."""
    runner = Enigma(tmp_path / "config")
    runner.ok("init")
    toml = runner.config_dir / "enigma.toml"
    text, n = re.subn(r"\[enigma\.chunk_strategy\.Cdc\][^\[]*", CHUNKING, toml.read_text())
    assert n == 1, "enigma init no longer writes a Cdc table"
    toml.write_text(text)
    repo = Repository(load_config(runner.config_dir), PluginManager(), lambda confirm: PASSPHRASE)
    store = ObjectStore(repo)
    store.manifest.create_bucket(BucketRecord(LIVE, "tester", time.time()))
    try:
        yield Rig(runner, repo, store)
    finally:
        store.close()
        repo.close()


def payload(data: bytes, piece: int = 64 * KiB) -> Payload:
    """The body as the gateway's request thread sees it: pulled piece by piece."""
    pieces = [data[i:i + piece] for i in range(0, len(data), piece)]
    pieces.reverse()

    def pull() -> bytes:
        return pieces.pop() if pieces else b""

    auth = sigv4.Auth(access_key="tester", payload_hash=sigv4.UNSIGNED)
    return open_body(pull, {"content-length": str(len(data))}, auth)


def put(store: ObjectStore, bucket: str, key: str, data: bytes) -> ObjectRecord:
    return store.put(bucket, key, payload(data), "application/octet-stream", {})


def read_back(store: ObjectStore, bucket: str, key: str) -> bytes:
    record = store.manifest.get_object(bucket, key)
    assert record is not None, f"{bucket}/{key} is missing"
    if record.size == 0:
        return b""
    return b"".join(store.read(record, 0, record.size - 1))


def bodies(n: int, size: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(size) for _ in range(n)]


class Outcome:
    """What one thread's call returned or raised."""

    def __init__(self) -> None:
        self.value: Any = None
        self.error: BaseException | None = None


def start(fn: Callable[[], Any]) -> tuple[threading.Thread, Outcome]:
    outcome = Outcome()

    def run() -> None:
        try:
            outcome.value = fn()
        except BaseException as exc:
            outcome.error = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def finish(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "a PUT hung (committer stuck?)"


def ok(outcome: Outcome) -> Any:
    if outcome.error is not None:
        raise AssertionError(f"the PUT failed: {outcome.error!r}") from outcome.error
    return outcome.value


class QueueWatch(threading.Condition):
    """Stands in for the committer's condition and counts the threads waiting on it.

    A follower waits on it only after queueing its entry, so "n threads have waited" means
    n PUTs are queued for the next batch: a fact, not a guess from sleeping.
    """

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[int] = set()
        self._changed = threading.Condition()

    def wait(self, timeout: float | None = None) -> bool:
        with self._changed:
            self._seen.add(threading.get_ident())
            self._changed.notify_all()
        return super().wait(timeout)

    def wait_for_queued(self, n: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self._seen) >= n, TIMEOUT), \
                f"only {len(self._seen)} of {n} PUTs queued behind the leader"


class Probe:
    """Counting wrappers on ``uploader.sync`` and ``manifest.apply_batch`` (instances only).

    ``hold()`` makes the first sync wait for ``release`` (telling ``in_sync`` it is there);
    ``fault`` makes syncs that start while it is set raise it instead of syncing.
    """

    def __init__(self, store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.syncs = 0
        self.applied = 0
        self.fault: BaseException | None = None
        self.in_sync = threading.Event()
        self.release = threading.Event()
        self._held = False
        self._lock = threading.Lock()
        self.queue = QueueWatch()
        monkeypatch.setattr(store.committer, "_cond", self.queue)
        real_sync, real_apply = store.uploader.sync, store.manifest.apply_batch

        def sync() -> None:
            fault = self.fault  # decided on entry: a held leader keeps the outcome it had
            with self._lock:
                self.syncs += 1
                first = self.syncs == 1
            if first and self._held:
                self.in_sync.set()
                assert self.release.wait(TIMEOUT), "the held sync was never released"
            if fault is not None:
                raise fault
            real_sync()

        def apply_batch(operations: list[tuple[str, list[Any]]]) -> list[Any]:
            with self._lock:
                self.applied += 1
            return real_apply(operations)

        monkeypatch.setattr(store.uploader, "sync", sync)
        monkeypatch.setattr(store.manifest, "apply_batch", apply_batch)

    def hold(self) -> Probe:
        self._held = True
        return self


def lead_then_queue(probe: Probe, leader: Callable[[], Any],
                    followers: list[Callable[[], Any]], *,
                    before_release: Callable[[], None] | None = None,
                    ) -> tuple[Outcome, list[Outcome]]:
    """Run ``leader`` until it holds in sync, queue ``followers`` behind it, release.

    The leader commits alone; every follower is queued before it is released, so all of
    them are committed together in the second batch.
    """
    probe.hold()
    lead_thread, lead = start(leader)
    assert probe.in_sync.wait(TIMEOUT), "the leader never reached sync"
    pairs = [start(fn) for fn in followers]
    probe.queue.wait_for_queued(len(followers))
    if before_release is not None:
        before_release()
    probe.release.set()
    finish([lead_thread, *(t for t, _ in pairs)])
    return lead, [o for _, o in pairs]


def all_at_once(probe: Probe, calls: list[Callable[[], Any]]) -> list[Outcome]:
    """Start ``calls`` together (a Barrier); the first to reach sync is held until all the
    others are queued behind it, so exactly two batches run: the leader's, then the rest."""
    probe.hold()
    barrier = threading.Barrier(len(calls))

    def gated(fn: Callable[[], Any]) -> Any:
        barrier.wait(TIMEOUT)
        return fn()

    pairs = [start(lambda fn=fn: gated(fn)) for fn in calls]
    assert probe.in_sync.wait(TIMEOUT), "no PUT reached sync"
    probe.queue.wait_for_queued(len(calls) - 1)
    probe.release.set()
    finish([t for t, _ in pairs])
    return [o for _, o in pairs]


# -- 1. shared batches ------------------------------------------------------------------


def test_concurrent_small_puts_share_syncs_and_transactions(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """32 PUTs at once must not cost 32 syncs and 32 fsynced transactions: that is the
    whole point of group commit, and each object must still come back byte-exact."""
    store = rig.store
    probe = Probe(store, monkeypatch)
    datas = bodies(32, 4 * KiB, seed=1)
    assert all(len(d) <= store.chunker.single_chunk_limit for d in datas)

    outcomes = all_at_once(probe, [lambda i=i: put(store, LIVE, f"small/{i:02d}", datas[i])
                                   for i in range(len(datas))])

    records = [ok(o) for o in outcomes]
    for i, (data, record) in enumerate(zip(datas, records, strict=True)):
        assert read_back(store, LIVE, f"small/{i:02d}") == data
        assert len(record.chunks) == 1
        chunk = store.manifest.get_chunk(record.chunks[0].chunk_id)
        assert chunk is not None and chunk.refcount == 1
    assert store.manifest.chunk_totals()[0] == len(datas)
    assert len(chunk_files(rig.runner.config_dir)) == len(datas)
    # One batch for the leader alone, one for the 31 queued behind it.
    assert store.committer.batches == 2
    assert probe.syncs == probe.applied == store.committer.batches < len(datas)


# -- 2. one PUT of a batch fails alone --------------------------------------------------


def test_put_into_deleted_bucket_fails_alone_in_its_batch(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bucket deleted while its PUT waited for the batch fails that PUT only; the
    others of the same transaction commit, and the failed PUT's chunk stays recorded
    (refcount 0) so that gc, not a leak, deals with it."""
    store = rig.store
    manifest = store.manifest
    manifest.create_bucket(BucketRecord("doomed", "tester", time.time()))
    probe = Probe(store, monkeypatch)
    leader_body, *datas = bodies(5, 4 * KiB, seed=2)
    doomed_body = datas.pop()
    followers = [lambda i=i: put(store, LIVE, f"k{i}", datas[i]) for i in range(len(datas))]
    followers.append(lambda: put(store, "doomed", "k", doomed_body))

    lead, outcomes = lead_then_queue(
        probe, lambda: put(store, LIVE, "leader", leader_body), followers,
        before_release=lambda: manifest.delete_bucket("doomed"))

    ok(lead)
    *good, bad = outcomes
    assert isinstance(bad.error, NotFoundError), bad.error
    for i, outcome in enumerate(good):
        ok(outcome)
        assert read_back(store, LIVE, f"k{i}") == datas[i]
    assert read_back(store, LIVE, "leader") == leader_body
    assert manifest.get_object("doomed", "k") is None
    manifest.create_bucket(BucketRecord("doomed", "tester", time.time()))
    assert manifest.get_object("doomed", "k") is None  # no row survived with the bucket
    assert manifest.list_objects("doomed") == []
    # The failed PUT was in the same transaction as the three that worked.
    assert store.committer.batches == probe.applied == probe.syncs == 2

    doomed_id = store.chunks.identify(doomed_body)
    chunk = manifest.get_chunk(doomed_id)
    assert chunk is not None and chunk.refcount == 0
    assert doomed_id in {c.id for c in manifest.unreferenced_chunks()}
    assert store.uploader.pending_record(doomed_id) is None  # recorded: not in flight
    for data in (leader_body, *datas):
        kept = manifest.get_chunk(store.chunks.identify(data))
        assert kept is not None and kept.refcount == 1
    assert len(chunk_files(rig.runner.config_dir)) == 5


# -- 3. a whole batch fails --------------------------------------------------------------


def test_failed_sync_fails_the_whole_batch_and_the_next_put_works(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A provider sync that fails means no chunk of the batch is known durable: every PUT
    waiting on it gets the error, nothing of it reaches the manifest, and the committer
    must not stay wedged (a leader flag left set would hang every later PUT)."""
    store = rig.store
    manifest = store.manifest
    probe = Probe(store, monkeypatch)
    leader_body, *datas = bodies(5, 4 * KiB, seed=3)
    fault = StorageError("injected: syncing provider 'local' failed")

    def set_fault() -> None:
        probe.fault = fault  # the held leader entered sync before: it still succeeds

    followers = [lambda i=i: put(store, LIVE, f"k{i}", datas[i]) for i in range(len(datas))]
    lead, outcomes = lead_then_queue(
        probe, lambda: put(store, LIVE, "leader", leader_body), followers,
        before_release=set_fault)

    ok(lead)
    for i, outcome in enumerate(outcomes):
        assert outcome.error is fault, outcome.error
        assert manifest.get_object(LIVE, f"k{i}") is None
        assert manifest.get_chunk(store.chunks.identify(datas[i])) is None
    assert manifest.chunk_totals()[0] == 1  # the leader's chunk only
    assert probe.syncs == 2 and probe.applied == 1  # the failed batch never reached SQLite
    assert store.committer.batches == 1

    probe.fault = None
    fresh = bodies(1, 4 * KiB, seed=33)[0]
    for key, data in (("fresh", fresh), ("k0", datas[0])):  # new bytes, and a retry
        thread, outcome = start(lambda key=key, data=data: put(store, LIVE, key, data))
        finish([thread])
        ok(outcome)
        assert read_back(store, LIVE, key) == data
        chunk = manifest.get_chunk(store.chunks.identify(data))
        assert chunk is not None and chunk.refcount == 1
    assert store.committer.batches == 3


def test_put_after_failed_batch_and_gc_stores_the_chunk_again(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk whose batch failed is an orphan file: gc may delete it. A later PUT of the
    same bytes must store it again, not trust the uploader's memory of it."""
    store = rig.store
    probe = Probe(store, monkeypatch)
    data = bodies(1, 4 * KiB, seed=4)[0]
    probe.fault = StorageError("injected: syncing provider 'local' failed")
    with pytest.raises(StorageError):
        put(store, LIVE, "first", data)
    probe.fault = None
    assert len(chunk_files(rig.runner.config_dir)) == 1  # stored, never recorded
    gc = rig.runner.ok("gc").out
    assert chunk_files(rig.runner.config_dir) == [], gc  # gc took it as an orphan

    put(store, LIVE, "again", data)
    assert read_back(store, LIVE, "again") == data


# -- 4. dedup across concurrent requests -------------------------------------------------


def test_same_small_body_twice_at_once_is_stored_once(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The PUT that found the chunk in flight must record it itself (pending_record)
    rather than rely on the PUT that stored it: here that one is held until the
    duplicate has fully committed, so the duplicate's object can only exist if it did."""
    store = rig.store
    data = bodies(1, 4 * KiB, seed=5)[0]
    real_store_now = store.uploader.store_now
    storer: list[int] = []
    other_done = threading.Event()
    seen_by_storer: list[int] = []

    def store_now(piece: bytes | memoryview) -> StoredChunk:
        stored = real_store_now(piece)
        if stored.record is not None:  # this thread stored it: let the duplicate go first
            storer.append(threading.get_ident())
            assert other_done.wait(TIMEOUT), "the duplicate PUT never finished"
            chunk = store.manifest.get_chunk(stored.chunk_id)
            seen_by_storer.append(chunk.refcount if chunk is not None else -1)
        return stored

    monkeypatch.setattr(store.uploader, "store_now", store_now)
    barrier = threading.Barrier(2)

    def one(key: str) -> ObjectRecord:
        barrier.wait(TIMEOUT)
        try:
            return put(store, LIVE, key, data)
        finally:
            if threading.get_ident() not in storer:
                other_done.set()

    pairs = [start(lambda key=key: one(key)) for key in ("a", "b")]
    finish([t for t, _ in pairs])
    for _, outcome in pairs:
        ok(outcome)

    assert len(storer) == 1, "exactly one PUT must have stored the chunk"
    assert seen_by_storer == [1], "the duplicate did not record the chunk itself"
    assert len(chunk_files(rig.runner.config_dir)) == 1
    assert store.manifest.chunk_totals()[0] == 1
    assert read_back(store, LIVE, "a") == read_back(store, LIVE, "b") == data
    chunk = store.manifest.get_chunk(store.chunks.identify(data))
    assert chunk is not None and chunk.refcount == 2
    assert store.committer.batches == 2  # the duplicate alone, then the storer alone


def test_same_large_body_four_times_at_once_is_stored_once(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A multi-chunk body through ``ChunkUploader.submit``, four times at once, all four
    stored before anything is recorded: every duplicate was caught in flight, not in the
    manifest, and the batch of three duplicates still records each chunk once."""
    store = rig.store
    probe = Probe(store, monkeypatch)
    data = bodies(1, 3 * MiB, seed=6)[0]
    assert len(data) > store.chunker.single_chunk_limit
    keys = [f"big/{i}" for i in range(4)]

    outcomes = all_at_once(probe, [lambda key=key: put(store, LIVE, key, data) for key in keys])

    records = [ok(o) for o in outcomes]
    ids = [ref.chunk_id for ref in records[0].chunks]
    assert len(ids) > 3, "the body should span several chunks"
    assert all([r.chunk_id for r in rec.chunks] == ids for rec in records)
    uses = Counter(ids)
    assert len(chunk_files(rig.runner.config_dir)) == len(uses)
    assert store.manifest.chunk_totals()[0] == len(uses)
    for chunk_id, n in uses.items():
        chunk = store.manifest.get_chunk(chunk_id)
        assert chunk is not None and chunk.refcount == len(keys) * n
    for key in keys:
        assert read_back(store, LIVE, key) == data
    assert store.committer.batches == probe.syncs == 2


# -- 5. ChunkUploader.pending_record ----------------------------------------------------


def test_pending_record_only_for_stored_unrecorded_chunks(rig: Rig) -> None:
    """A duplicate PUT commits whatever pending_record gives it: a record must come back
    exactly while the chunk is stored and not yet in the manifest, and never otherwise."""
    store = rig.store
    uploader = store.uploader
    assert uploader.pending_record(os.urandom(32)) is None  # never seen

    data = bodies(1, 4 * KiB, seed=7)[0]
    stored = uploader.store_now(data)
    assert stored.record is not None
    assert uploader.pending_record(stored.chunk_id) == stored.record
    duplicate = uploader.store_now(data)  # in flight: not stored twice, no record of its own
    assert duplicate.chunk_id == stored.chunk_id and duplicate.record is None
    assert uploader.pending_record(stored.chunk_id) == stored.record

    store.manifest.add_chunks([stored.record])
    uploader.recorded([stored.chunk_id])
    assert uploader.pending_record(stored.chunk_id) is None  # the manifest has it now
    assert len(chunk_files(rig.runner.config_dir)) == 1


def test_pending_record_none_while_uploading_or_after_a_failed_upload(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk whose upload has not finished, or failed, is not durable anywhere: its
    record must not be handed to a PUT that would then commit it."""
    store = rig.store
    uploader = store.uploader
    provider = store.chunks.providers["local"]
    real_put = provider.put
    entered, proceed = threading.Event(), threading.Event()
    failing: list[bool] = []

    def slow_put(key: str, sealed: bytes | memoryview) -> None:
        if failing:
            raise StorageError("injected: disk full")
        entered.set()
        assert proceed.wait(TIMEOUT)
        real_put(key, sealed)

    monkeypatch.setattr(provider, "put", slow_put)
    data, broken = bodies(2, 256 * KiB, seed=8)
    future = uploader.submit(data)
    assert entered.wait(TIMEOUT)
    chunk_id = store.chunks.identify(data)
    assert uploader.pending_record(chunk_id) is None  # upload still running
    proceed.set()
    stored = future.result(TIMEOUT)
    assert stored.record is not None
    assert uploader.pending_record(chunk_id) == stored.record

    failing.append(True)
    with pytest.raises(StorageError):
        uploader.store_now(broken)
    assert uploader.pending_record(store.chunks.identify(broken)) is None
    failing.clear()
    retried = uploader.store_now(broken)  # the failure did not stick to the id
    assert retried.record is not None
    assert uploader.pending_record(retried.chunk_id) == retried.record


class InjectedFault(Exception):
    """A fault no real code raises, so a test can tell its own error from any other."""


def test_a_failed_seal_does_not_poison_later_puts_of_the_same_bytes(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """One PUT failing while sealing (a compressor or key error, memory) must fail that
    PUT only; the same bytes PUT again once the fault is gone must be stored."""
    store = rig.store
    real_seal = store.chunks.seal
    faults = [InjectedFault("injected: sealing failed")]

    def seal(chunk_id: bytes, data: bytes | memoryview) -> Any:
        if faults:
            raise faults.pop()
        return real_seal(chunk_id, data)

    monkeypatch.setattr(store.chunks, "seal", seal)
    data = bodies(1, 4 * KiB, seed=9)[0]
    with pytest.raises(InjectedFault):
        put(store, LIVE, "first", data)
    assert not faults
    put(store, LIVE, "again", data)  # raises the first PUT's error when the id is stuck
    assert read_back(store, LIVE, "again") == data
