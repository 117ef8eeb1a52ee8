"""Three real ``enigma serve`` nodes on loopback, driven with boto3 and killed with SIGKILL."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import BotoCoreError, ClientError
from cluster_support import Cluster, Node, wait_for
from helpers import Enigma, assert_clean_error, make_tree, restored_root, snapshot

BUCKET = "raft-bucket"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster.create(tmp_path, raft_extra="snapshot_threshold = 200\n")
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.stop_all()


def body_of(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest() * 128  # 4 KiB, distinct per key


class Writers:
    """Threads PUTting distinct objects round-robin over the nodes, recording what was
    acknowledged (a 200) apart from what failed (an error or no answer)."""

    def __init__(self, nodes: list[Node], threads: int = 6) -> None:
        self.nodes = nodes
        self.acknowledged: list[str] = []
        self.failed = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(threads)]

    def _run(self, number: int) -> None:
        clients = [node.client() for node in self.nodes]
        count = 0
        while not self._stop.is_set():
            key = f"w{number}/{count:05d}"
            client = clients[count % len(clients)]
            count += 1
            try:
                client.put_object(Bucket=BUCKET, Key=key, Body=body_of(key))
            except (ClientError, BotoCoreError):
                self.failed += 1
                time.sleep(0.05)
                continue
            self.acknowledged.append(key)

    def __enter__(self) -> Writers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


def assert_all_readable(nodes: list[Node], keys: list[str]) -> None:
    for node in nodes:
        client = node.client()
        for key in keys:
            assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body_of(key), \
                f"{key} differs or is missing on {node.name}"


def assert_same_manifests(nodes: list[Node]) -> None:
    for node in nodes:
        node.client().list_buckets()  # a read: a barrier, so all is applied
    digests = {node.name: node.manifest_digest() for node in nodes}
    assert len(set(digests.values())) == 1, digests


def test_leader_killed_mid_stream_loses_no_acknowledged_write(cluster: Cluster) -> None:
    cluster.nodes[0].client().create_bucket(Bucket=BUCKET)
    old_leader = cluster.wait_for_leader()
    with Writers(cluster.nodes) as writers:
        wait_for(lambda: len(writers.acknowledged) >= 60, 30, "PUTs before the kill")
        old_leader.process.kill()  # SIGKILL: no goodbye to the peers
        killed_at = time.monotonic()
        survivors = cluster.running()
        new_leader = cluster.wait_for_leader(timeout=10)
        failover = time.monotonic() - killed_at
        before = len(writers.acknowledged)
        wait_for(lambda: len(writers.acknowledged) >= before + 60, 30, "PUTs after failover")
    assert new_leader is not old_leader
    assert failover < 5.0, f"a new leader took {failover:.1f} s"
    assert_all_readable(survivors, writers.acknowledged)
    assert_same_manifests(survivors)

    cluster.start(old_leader)  # restarted with its data_dir: it rejoins and catches up
    assert_all_readable([old_leader], writers.acknowledged)
    assert_same_manifests(cluster.nodes)


def test_new_empty_node_catches_up_from_a_snapshot(cluster: Cluster, tmp_path: Path) -> None:
    client = cluster.nodes[1].client()
    client.create_bucket(Bucket=BUCKET)
    keys = [f"before/{n:04d}" for n in range(260)]  # past snapshot_threshold = 200
    for key in keys:
        client.put_object(Bucket=BUCKET, Key=key, Body=body_of(key))
    leader = cluster.wait_for_leader()
    wait_for(lambda: (leader.root / "raft" / "snapshot").exists(), 20, "a leader snapshot")
    assert leader.status()["log_len"] < 260, "the leader's log was never compacted"

    fourth = cluster.add_node()
    for node in cluster.nodes[:3]:  # what an operator does: list the new member everywhere
        cluster.configure(node)
    cluster.start(fourth)
    Enigma(cluster.nodes[0].config_dir).ok("raft", "add-node", fourth.raft_addr)
    wait_for(lambda: fourth.status()["last_applied"] >= leader.status()["commit_idx"], 30,
             "the new node to catch up")
    assert (fourth.root / "raft" / "snapshot").exists(), "caught up without a snapshot"
    assert_all_readable([fourth], keys)
    fourth.client().put_object(Bucket=BUCKET, Key="via-fourth", Body=body_of("via-fourth"))
    assert_all_readable(cluster.nodes, ["via-fourth"])
    assert_same_manifests(cluster.nodes)

    status = Enigma(cluster.nodes[0].config_dir).ok("raft", "status", "--json").out
    assert all(n.name in status for n in cluster.nodes), status
    assert '"role": "' in status and '"lag": 0' in status, status

    Enigma(cluster.nodes[0].config_dir).ok("raft", "remove-node", fourth.raft_addr)
    fourth.process.stop()
    wait_for(lambda: f"match_idx_server_{fourth.raft_addr}" not in leader.status(), 10,
             "the leader to drop the removed node")
    client.put_object(Bucket=BUCKET, Key="after-removal", Body=body_of("after-removal"))
    assert_all_readable(cluster.nodes[:3], ["after-removal"])


def test_without_quorum_writes_fail_with_503_and_nothing_acknowledged_is_lost(
        tmp_path: Path) -> None:
    cluster = Cluster.create(tmp_path, raft_extra="commit_timeout_ms = 2000\n")
    try:
        cluster.start_all()
        survivor, *others = cluster.nodes
        survivor.client().create_bucket(Bucket=BUCKET)
        acknowledged = [f"k{n}" for n in range(20)]
        for number, key in enumerate(acknowledged):
            cluster.nodes[number % 3].client().put_object(Bucket=BUCKET, Key=key,
                                                          Body=body_of(key))
        for node in others:
            node.process.kill()
        client = survivor.client()
        for attempt in ("lost-1", "lost-2"):
            started = time.monotonic()
            with pytest.raises(ClientError) as failure:
                client.put_object(Bucket=BUCKET, Key=attempt, Body=body_of(attempt))
            took = time.monotonic() - started
            assert failure.value.response["Error"]["Code"] == "ServiceUnavailable"
            assert failure.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
            assert took < 8.0, f"the 503 took {took:.1f} s"
        # Reads are linearizable: without a majority they fail too rather than answer
        # from a copy that may be stale.
        with pytest.raises(ClientError) as failure:
            client.get_object(Bucket=BUCKET, Key="k0")
        assert failure.value.response["Error"]["Code"] == "ServiceUnavailable"

        cluster.start(others[0])  # a majority again
        cluster.wait_for_leader()
        assert_all_readable([survivor, others[0]], acknowledged)
        client.put_object(Bucket=BUCKET, Key="after", Body=body_of("after"))
        assert_all_readable([others[0]], ["after"])
    finally:
        cluster.stop_all()


def test_cli_backup_and_restore_through_the_cluster(cluster: Cluster, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    first, second, third = (Enigma(n.config_dir) for n in cluster.nodes)
    backup_id = first.ok("backup", str(tree)).out.split()[0]
    assert backup_id in second.ok("list").out  # committed through Raft, seen by all
    third.ok("restore", backup_id, str(tmp_path / "restored"))
    assert snapshot(restored_root(tmp_path / "restored", tree)) == snapshot(tree)
    again = second.ok("backup", str(tree)).err  # the file cache replicated too
    assert "0 new" in again and "0 changed" in again, again
    assert_same_manifests(cluster.nodes)


def test_cli_without_a_reachable_cluster_is_a_clean_error(tmp_path: Path) -> None:
    cluster = Cluster.create(tmp_path, raft_extra="commit_timeout_ms = 2000\n")
    started = time.monotonic()
    result = Enigma(cluster.nodes[0].config_dir)("list")
    assert_clean_error(result, "no Raft leader reachable")
    assert time.monotonic() - started < 20


def test_writes_right_after_bucket_changes_on_another_node(cluster: Cluster) -> None:
    """A plain PUT skips the read barrier unless its bucket looks missing: the commit checks
    the bucket again in log order, so it neither misses a new bucket nor revives a
    deleted one."""
    a, b, c = (node.client() for node in cluster.nodes)
    for number in range(5):
        name = f"fresh-{number}"
        a.create_bucket(Bucket=name)
        b.put_object(Bucket=name, Key="k", Body=b"x")
        assert c.get_object(Bucket=name, Key="k")["Body"].read() == b"x"
        c.delete_object(Bucket=name, Key="k")
        a.delete_bucket(Bucket=name)
        with pytest.raises(ClientError) as failure:
            b.put_object(Bucket=name, Key="k", Body=b"x")
        assert failure.value.response["Error"]["Code"] == "NoSuchBucket"
    assert_same_manifests(cluster.nodes)


def test_metrics_show_role_term_and_lag(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader()
    follower = next(n for n in cluster.nodes if n is not leader)
    before = leader.metrics()[("enigma_raft_commit_index", ())]
    client = follower.client()
    client.create_bucket(Bucket=BUCKET)
    for number in range(10):
        client.put_object(Bucket=BUCKET, Key=f"m{number}", Body=body_of(f"m{number}"))
    leader.client().list_buckets()  # a barrier: the peers have caught up with the writes
    mine, theirs = leader.metrics(), follower.metrics()
    assert mine[("enigma_raft_role", (("role", "leader"),))] == 1
    assert theirs[("enigma_raft_role", (("role", "follower"),))] == 1
    assert theirs[("enigma_raft_role", (("role", "leader"),))] == 0
    assert mine[("enigma_raft_term", ())] == theirs[("enigma_raft_term", ())] >= 1
    # One after another, each of the 11 writes is its own entry (plus read barriers).
    assert mine[("enigma_raft_commit_index", ())] >= before + 11
    assert mine[("enigma_raft_apply_lag", ())] == 0
    peers = {labels[0][1]: value for (name, labels), value in mine.items()
             if name == "enigma_raft_peer_lag"}
    assert set(peers) == {n.raft_addr for n in cluster.nodes if n is not leader}
    assert all(lag <= 1 for lag in peers.values()), peers
    assert not any(name == "enigma_raft_peer_lag" and labels for (name, labels) in theirs)
