"""The replicated manifest on a real one-member pysyncobj cluster, in this process.

A single member is its own majority, so it elects itself and commits alone: the log,
journal, snapshots and barrier run for real without a second process. The multi-process
behaviour (failover, catch-up, quorum loss) is in test_cluster.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from enigma_raft.config import RaftOptions
from enigma_raft.node import ManifestNode, reset_state, sync_conf
from enigma_raft.replicated import ReplicatedManifest
from enigma_raft.snapshot import SnapshotFile
from servers import free_port

from enigma.errors import IntegrityError, NotFoundError
from enigma.manifest import BucketRecord, Manifest, ObjectRecord


def options(data_dir: Path, threshold: int = 10000) -> RaftOptions:
    addr = f"127.0.0.1:{free_port()}"
    return RaftOptions("solo", data_dir, addr, addr, (), 0.3, 0.05, threshold, 5.0, None)


def start(opts: RaftOptions) -> ReplicatedManifest:
    local = Manifest(reset_state(opts.data_dir))
    node = ManifestNode(local, opts.addr, [], sync_conf(opts, SnapshotFile(local)))
    manifest = ReplicatedManifest(local, node, opts.commit_timeout)
    deadline = time.monotonic() + 10
    while not node._isLeader():
        assert time.monotonic() < deadline, "a one-member cluster never elected itself"
        time.sleep(0.02)
    return manifest


def obj(key: str, stamp: float = 1.0) -> ObjectRecord:
    return ObjectRecord("bucket-a", key, 3, "etag", stamp)


@pytest.fixture
def solo(tmp_path: Path):
    manifest = start(options(tmp_path / "raft"))
    yield manifest
    manifest.close()


def test_operations_commit_and_apply_with_their_own_errors(solo: ReplicatedManifest) -> None:
    solo.create_bucket(BucketRecord("bucket-a", "owner", 1.0))
    solo.put_object(obj("k"))
    assert solo.get_object("bucket-a", "k").etag == "etag"  # applied before returning
    with pytest.raises(IntegrityError, match="already exists"):
        solo.create_bucket(BucketRecord("bucket-a", "owner", 2.0))
    with pytest.raises(NotFoundError, match="no bucket"):
        solo.put_object(ObjectRecord("missing-bucket", "k", 0, "", 1.0))
    results = solo.apply_batch([("put_object", [obj("x")]),
                                ("put_object", [ObjectRecord("nope", "k", 0, "", 1.0)])])
    assert results[0] is None and isinstance(results[1], NotFoundError)
    assert solo.get_object("bucket-a", "x") is not None
    with pytest.raises(ValueError, match="unknown manifest operation"):
        solo.apply("close")


def test_concurrent_read_barriers_share_commits(solo: ReplicatedManifest) -> None:
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(5):
                solo.read_barrier()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    # 80 waits; each needs a barrier that started after it arrived, and waits that arrive
    # while one runs share the next one.
    assert 5 <= solo.barrier.rounds < 80


def test_restart_rebuilds_from_snapshot_and_journal(tmp_path: Path) -> None:
    opts = options(tmp_path / "raft", threshold=20)
    manifest = start(opts)
    manifest.create_bucket(BucketRecord("bucket-a", "owner", 1.0))
    for number in range(60):  # past the threshold: the log is compacted at least once
        manifest.put_object(obj(f"key-{number:03d}", float(number)))
    deadline = time.monotonic() + 10
    while not (opts.data_dir / "snapshot").exists():
        assert time.monotonic() < deadline, "no snapshot written after 60 entries"
        time.sleep(0.05)
    manifest.put_object(obj("after-snapshot", 99.0))
    manifest.delete_object("bucket-a", "key-000")
    log_entries = manifest.node.getStatus()["log_len"]
    assert log_entries < 62, "the log was never compacted"
    expected = [o.key for o in manifest.list_objects("bucket-a", limit=1000)]
    manifest.close()

    again = start(opts)  # the same member restarted: same address and data_dir
    try:
        again.read_barrier()  # everything committed before is applied again here
        assert [o.key for o in again.list_objects("bucket-a", limit=1000)] == expected
        assert "after-snapshot" in expected and "key-000" not in expected
    finally:
        again.close()


def test_snapshot_file_round_trip(tmp_path: Path) -> None:
    source = Manifest(tmp_path / "a.db")
    source.create_bucket(BucketRecord("bucket-a", "owner", 1.0))
    source.put_object(obj("k"))
    SnapshotFile(source).serialize(str(tmp_path / "snap"), ("entry", "entry0", {"n1"}))
    target = Manifest(tmp_path / "b.db")
    target.create_bucket(BucketRecord("other", "owner", 1.0))  # replaced wholesale
    assert SnapshotFile(target).deserialize(str(tmp_path / "snap")) == \
        ("entry", "entry0", {"n1"})
    assert [b.name for b in target.list_buckets()] == ["bucket-a"]
    assert target.get_object("bucket-a", "k") is not None
    assert (tmp_path / "snap").stat().st_mode & 0o777 == 0o600
    (tmp_path / "bad").write_bytes(b"not a snapshot")
    with pytest.raises(ValueError, match="not an enigma Raft snapshot"):
        SnapshotFile(target).deserialize(str(tmp_path / "bad"))
    source.close()
    target.close()


def test_the_journal_is_the_durable_one(solo: ReplicatedManifest) -> None:
    import pysyncobj.syncobj
    from enigma_raft.node import DurableJournal
    from pysyncobj.journal import createJournal

    journal = solo.node._SyncObj__raftLog  # pysyncobj keeps it private
    assert isinstance(journal, DurableJournal)
    assert pysyncobj.syncobj.createJournal is createJournal  # swapped back after start
    flushed: list[int] = []
    original = journal.flush
    journal.flush = lambda: (flushed.append(1), original())[1]
    solo.create_bucket(BucketRecord("bucket-durable", "owner", 1.0))
    assert flushed, "an entry was appended without msync"
