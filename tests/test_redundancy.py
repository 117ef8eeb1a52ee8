"""A cloud is lost: Replicate and Erasure (Reed-Solomon) over real S3 servers.

Three providers: two buckets on a moto server and one on SeaweedFS. Back up, wipe one
bucket entirely, restore bit-exact and verify, `enigma repair`, wipe another bucket and
restore again. Also: a damaged shard or copy is passed over, an unreachable provider is
survived, a provider taken out of the config has its share moved by repair, config
mistakes are one line, and the shard format itself (enigma/erasure.py).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import PASSPHRASE, Enigma, assert_clean_error, make_tree, restored_root, snapshot
from servers.s3 import S3Server, moto_server, seaweedfs_server

from enigma import crypto, erasure
from enigma.backup import run_backup
from enigma.chunkstore import ChunkStore, chunk_key
from enigma.config import parse_config
from enigma.errors import ConfigError, IntegrityError
from enigma.interfaces import ProviderSlot
from enigma.manifest import ChunkRecord, Manifest
from enigma.packs import pack_key
from enigma.plugin_manager import PluginManager
from enigma.plugins.distribution import Erasure, Replicate
from enigma.repair import run_repair
from enigma.repository import Repository
from enigma.restore import run_restore

SMALL_CDC = "[enigma.chunk_strategy.Cdc]\nmin_size = 16384\navg_size = 65536\nmax_size = 262144\n"
ERASURE = ('[enigma]\ndistribution = "Erasure"\n'
           '[enigma.erasure]\ndata_shards = 2\nparity_shards = 1\n')
REPLICATE = '[enigma]\ndistribution = "Replicate"\n[enigma.replication]\ncopies = 2\n'


# -- the shard format ----------------------------------------------------------------------


def test_shards_decode_from_any_k_of_them() -> None:
    rng = random.Random(8)
    for length, k, m in [(16, 1, 1), (17, 2, 1), (1001, 2, 2), (65_537, 3, 2), (4099, 4, 3)]:
        sealed = rng.randbytes(length)
        objects = erasure.encode(sealed, k, m)
        assert len(objects) == k + m
        assert objects == erasure.encode(sealed, k, m)  # deterministic: repair relies on it
        shards = [erasure.parse(o) for o in objects]
        for subset in itertools.combinations(shards, k):
            assert erasure.decode(list(subset)) == sealed, (length, k, m)
        with pytest.raises(ValueError):
            erasure.decode(shards[:k - 1] or shards[:0])


def test_shard_header_is_self_describing() -> None:
    sealed = random.Random(1).randbytes(1000)
    objects = erasure.encode(sealed, 3, 2)
    for index, blob in enumerate(objects):
        magic, version, k, m, i, length, set_id, crc = struct.unpack_from(">4sBBBBI8sI", blob)
        assert (magic, version, k, m, i, length) == (b"ENGS", 1, 3, 2, index, 1000)
        assert set_id == sealed[-crypto.TAG_SIZE:][:8]  # the AES-GCM tag's first 8 bytes
        assert len(blob) == erasure.HEADER_SIZE + 334 == erasure.shard_object_size(1000, 3)
        assert crc == zlib.crc32(blob[erasure.HEADER_SIZE:])
        assert erasure.is_shard(blob)
    assert objects[0][erasure.HEADER_SIZE:] == sealed[:334]  # data shards are plain slices
    assert not erasure.is_shard(b"ENGC" + bytes(40))  # a whole sealed chunk is not a shard


@pytest.mark.parametrize(("damage", "message"), [
    (lambda b: b[:10], "truncated"),
    (lambda b: b"XXXX" + b[4:], "bad magic"),
    (lambda b: b[:4] + b"\x02" + b[5:], "format version 2"),
    (lambda b: b[:7] + b"\x09" + b[8:], "index 9"),
    (lambda b: b[:-1], "truncated or padded"),
    (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "CRC-32 mismatch"),
])
def test_damaged_shards_are_rejected(damage: Any, message: str) -> None:
    blob = erasure.encode(random.Random(2).randbytes(500), 2, 1)[1]
    with pytest.raises(IntegrityError, match=message):
        erasure.parse(damage(blob))


def test_shards_of_two_writes_never_mix() -> None:
    data = random.Random(3).randbytes(300)
    first = [erasure.parse(o) for o in erasure.encode(data + b"A" * 16, 2, 1)]
    second = [erasure.parse(o) for o in erasure.encode(data + b"B" * 16, 2, 1)]
    assert first[0].set_id != second[0].set_id
    with pytest.raises(ValueError, match="different encodings"):
        erasure.decode([first[0], second[1]])


def test_policies_rotate_over_distinct_providers() -> None:
    slots = [ProviderSlot(label) for label in "abcd"]
    replicate = Replicate(slots, copies=3)
    erasure_policy = Erasure(slots, data_shards=2, parity_shards=1)
    for policy, width in ((replicate, 3), (erasure_policy, 3)):
        picks = [policy.choose(bytes(32), 100) for _ in range(8)]
        assert all(len(set(p)) == width for p in picks)
        load = {label: sum(label in p for p in picks) for label in "abcd"}
        assert set(load.values()) == {6}, load  # each provider the same share
    assert erasure_policy.redundancy.factor == 1.5 and erasure_policy.redundancy.tolerates == 1
    assert replicate.redundancy.factor == 3 and replicate.redundancy.tolerates == 2
    with pytest.raises(ConfigError, match="'copies' = 5 needs 5 distinct providers"):
        Replicate(slots, copies=5)


def test_set_chunk_providers_replaces_locations(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path / "manifest.db")
    record = ChunkRecord(id=bytes(range(32)), size=10, stored_size=48, compression="",
                         key_id=1, providers=("a", "b", "c"))
    manifest.add_chunks([record])
    assert "set_chunk_providers" in Manifest.MUTATING_OPERATIONS
    manifest.apply("set_chunk_providers", [(record.id, ["a", "d", "c"]),
                                           (bytes(32), ["x"])])  # unknown id: skipped
    found = manifest.get_chunk(record.id)
    assert found is not None and found.providers == ("a", "c", "d")
    assert manifest.get_chunk(bytes(32)) is None
    assert manifest.chunk_stats() == {"a": (1, 48), "c": (1, 48), "d": (1, 48)}


# -- reading past damage, in-process on local disks -----------------------------------------


def local_repo(tmp_path: Path, policy: str, names: str) -> Repository:
    config_dir = tmp_path / "config"
    config_dir.mkdir(exist_ok=True)
    providers = "".join(f'[[providers]]\nname = "{n}"\ntype = "Local"\npath = "{tmp_path / n}"\n'
                        for n in names)
    config = parse_config(policy + providers, config_dir, config_dir / "enigma.toml")
    repo = Repository(config, PluginManager(), lambda confirm: PASSPHRASE)
    repo.create_keys()
    for provider in repo.providers.values():
        provider.create_bucket()
    return repo


def object_path(tmp_path: Path, label: str, chunk_id: bytes) -> Path:
    return tmp_path / label / chunk_key(chunk_id)


def test_any_m_shards_may_go_and_a_forged_shard_is_passed_over(tmp_path: Path) -> None:
    policy = '[enigma]\ndistribution = "Erasure"\n[enigma.erasure]\ndata_shards = 2\n' \
             'parity_shards = 2\n'
    repo = local_repo(tmp_path, policy, "abcd")
    store = ChunkStore(repo)
    data = os.urandom(200_000)
    record = store.put(data).record
    assert record is not None and len(record.providers) == 4
    paths = {label: object_path(tmp_path, label, record.id) for label in record.providers}
    originals = {label: path.read_bytes() for label, path in paths.items()}
    # What a backup reports as uploaded: the shard objects' real sizes, not 4 whole copies.
    assert store.uploaded_size(record) == sum(len(blob) for blob in originals.values())
    for lost in itertools.combinations(paths, 2):
        for label in lost:
            paths[label].unlink()
        assert store.get(record) == data, lost
        for label in lost:
            paths[label].write_bytes(originals[label])
    # Forged shards: payload changed and the CRC recomputed, so only AES-GCM can tell;
    # the reader tries other sets of two until one authenticates.
    for label in ("a", "b"):
        blob = bytearray(originals[label])
        blob[erasure.HEADER_SIZE + 60] ^= 0xFF  # in the ciphertext
        struct.pack_into(">I", blob, 20, zlib.crc32(blob[erasure.HEADER_SIZE:]))
        paths[label].write_bytes(bytes(blob))
    assert store.get(record) == data
    paths["c"].unlink()
    with pytest.raises(IntegrityError, match="missing on provider 'c'") as caught:
        store.get(record)
    assert "authentication failed" in str(caught.value)
    assert str(caught.value).count(record.id.hex()[:12]) == 1  # named once, not per try


def test_a_bit_flipped_shard_still_restores_and_is_repaired(tmp_path: Path) -> None:
    repo = local_repo(tmp_path, ERASURE, "abc")
    source = tmp_path / "src"
    source.mkdir()
    (source / "data.bin").write_bytes(random.Random(4).randbytes(400_000))
    backup_id = run_backup(repo, [source]).backup_id
    shards = sorted((tmp_path / "b" / "chunks").rglob("*/*"))
    assert shards
    blob = bytearray(shards[0].read_bytes())
    blob[erasure.HEADER_SIZE + 1000] ^= 0x04
    shards[0].write_bytes(bytes(blob))
    result = run_restore(repo, backup_id, tmp_path / "out")
    assert result.ok
    assert (restored_root(tmp_path / "out", source) / "data.bin").read_bytes() == \
        (source / "data.bin").read_bytes()
    repaired = run_repair(repo)
    assert (repaired.repaired, repaired.objects, repaired.ok) == (1, 1, True)
    erasure.parse(shards[0].read_bytes())  # sound again: rebuilt in place
    assert run_repair(repo).healthy == repaired.chunks


def test_copies_fall_back_and_repair_rebuilds_them(tmp_path: Path) -> None:
    policy = '[enigma]\ndistribution = "Replicate"\n[enigma.replication]\ncopies = 3\n'
    repo = local_repo(tmp_path, policy, "abc")
    store = ChunkStore(repo)
    data = os.urandom(50_000)
    record = store.put(data).record
    assert record is not None
    repo.manifest.add_chunks([record])
    object_path(tmp_path, "a", record.id).unlink()
    flipped = bytearray(object_path(tmp_path, "b", record.id).read_bytes())
    flipped[-3] ^= 1
    object_path(tmp_path, "b", record.id).write_bytes(bytes(flipped))
    assert store.get(record) == data  # c's copy
    result = run_repair(repo, dry_run=True)
    assert (result.repaired, result.objects, result.ok) == (1, 2, True)
    assert not object_path(tmp_path, "a", record.id).exists()  # a dry run writes nothing
    result = run_repair(repo)
    assert (result.repaired, result.objects) == (1, 2)
    assert run_repair(repo).healthy == 1
    object_path(tmp_path, "c", record.id).unlink()
    assert store.get(record) == data


def test_two_writers_of_one_chunk_still_read_and_repair(tmp_path: Path) -> None:
    """Two uploads of the same new chunk at once (two gateway nodes): different nonces,
    different shard sets, overlapping providers. Sets never mix; one is whole."""
    repo = local_repo(tmp_path, ERASURE, "abcd")
    store = ChunkStore(repo)
    data = os.urandom(30_000)
    first = store.put(data).record
    second = store.put(data).record  # not in the manifest yet: stored again, rotated on
    assert first is not None and second is not None
    assert first.providers != second.providers
    repo.manifest.add_chunks([first, second])  # locations merge
    record = repo.manifest.get_chunk(first.id)
    assert record is not None and len(record.providers) == 4
    assert store.get(record) == data
    assert run_repair(repo).healthy == 1


# -- real S3 servers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, S3Server]]:
    pytest.importorskip("enigma_storage_s3", reason="needs plugins/storage-s3")
    base = tmp_path_factory.mktemp("s3")
    with moto_server(base / "moto") as moto, seaweedfs_server(base / "weed") as weed:
        yield {"moto": moto, "weed": weed}


class Cloud:
    """One provider: a bucket on one of the servers."""

    def __init__(self, name: str, server: S3Server, bucket: str) -> None:
        self.name, self.server, self.bucket = name, server, bucket

    def toml(self) -> str:
        return self.server.providers_toml(self.name, self.bucket)

    def keys(self, prefix: str = "chunks/") -> list[str]:
        client = self.server.client()
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                      Prefix=prefix):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return keys

    def wipe(self) -> int:
        """Delete every object in the bucket (chunks, keystore copy, snapshots: all)."""
        client = self.server.client()
        keys = self.keys("")
        for key in keys:
            client.delete_object(Bucket=self.bucket, Key=key)
        assert not self.keys("")
        return len(keys)


def three_clouds(s3: dict[str, S3Server], tag: str) -> list[Cloud]:
    return [Cloud("one", s3["moto"], f"{tag}-one"), Cloud("two", s3["moto"], f"{tag}-two"),
            Cloud("three", s3["weed"], f"{tag}-three")]


def repository(tmp_path: Path, policy: str, clouds: list[Cloud], extra: str = "") -> Enigma:
    enigma = Enigma(tmp_path / "config")
    enigma.config_dir.mkdir(exist_ok=True)
    write_config(enigma, policy, clouds, extra)
    enigma.ok("init")
    return enigma


def write_config(enigma: Enigma, policy: str, clouds: list[Cloud], extra: str = "") -> None:
    text = policy + SMALL_CDC + "".join(c.toml() for c in clouds) + extra
    (enigma.config_dir / "enigma.toml").write_text(text)


def source_tree(tmp_path: Path) -> Path:
    source = make_tree(tmp_path / "src")
    (source / "random.bin").write_bytes(random.Random(5).randbytes(1_500_000))
    return source


def backup(enigma: Enigma, source: Path) -> dict[str, Any]:
    """``backup --json``'s summary: the last line (a run over a second prints status lines
    first, docs/json.md)."""
    return json.loads(enigma.ok("backup", "--json", str(source)).out.strip().splitlines()[-1])


def chunk_records(enigma: Enigma) -> list[ChunkRecord]:
    with Manifest(enigma.config_dir / "manifest.db") as manifest:
        return list(manifest.iter_chunks())


def objects_of(records: list[ChunkRecord], provider: str) -> set[str]:
    """What ``provider`` should hold: chunk objects (or shards) and packs."""
    return {chunk_key(r.id) if r.pack is None else pack_key(r.pack)
            for r in records if provider in r.providers}


def restore_exact(enigma: Enigma, backup_id: str, source: Path, dest: Path) -> None:
    enigma.ok("restore", backup_id, str(dest))
    assert snapshot(restored_root(dest, source)) == snapshot(source)
    assert "all good" in enigma.ok("verify", backup_id).out


@pytest.mark.parametrize(("policy", "factor", "per_chunk"), [
    (ERASURE, 1.5, 3),
    (REPLICATE, 2.0, 2),
], ids=["erasure-2+1", "replicate-2"])
def test_a_wiped_cloud_loses_nothing(s3: dict[str, S3Server], tmp_path: Path, policy: str,
                                     factor: float, per_chunk: int) -> None:
    erasure_coded = per_chunk == 3  # the slower extras run once, for shards
    clouds = three_clouds(s3, "erasure" if erasure_coded else "replicate")
    enigma = repository(tmp_path, policy, clouds)
    source = source_tree(tmp_path)
    backup_id = backup(enigma, source)["backup_id"]

    status = json.loads(enigma.ok("status", "--json").out)
    chunks, redundancy = status["chunks"], status["redundancy"]
    assert chunks > 20
    assert redundancy["factor"] == factor and redundancy["survives"] == 1
    assert factor * 0.98 < redundancy["overhead"] < factor * 1.15, redundancy
    # Packs are on: Replicate's small chunks (here all of them) sit in packs, the same pack
    # on both providers of a chunk; Erasure's shards are always objects of their own.
    records = chunk_records(enigma)
    assert len(records) == chunks
    assert all((r.pack is None) == erasure_coded for r in records)
    assert sum(len(r.providers) for r in records) == per_chunk * chunks  # a copy or shard each
    held = {c.name: objects_of(records, c.name) for c in clouds}
    for cloud in clouds:  # each cloud holds exactly the objects the manifest says
        assert set(cloud.keys()) | set(cloud.keys("packs/")) == held[cloud.name], cloud.name

    on_one = [r for r in records if "one" in r.providers]
    assert clouds[0].wipe() >= len(held["one"])
    enigma.ok("restore", backup_id, str(tmp_path / "out1"))
    assert snapshot(restored_root(tmp_path / "out1", source)) == snapshot(source)

    if erasure_coded:
        assert "would rebuild" in enigma.ok("repair", "--dry-run").out
        assert not clouds[0].keys()
    report = json.loads(enigma.ok("repair", "--json").out)
    # A lost chunk object is written again where it was; a chunk of a lost pack moves out
    # of its pack, as whole objects on all its providers.
    rewritten = sum(len(r.providers) if r.pack else 1 for r in on_one)
    assert (report["repaired"], report["objects"]) == (len(on_one), rewritten), report
    assert report["ok"]
    assert set(clouds[0].keys()) == {chunk_key(r.id) for r in on_one}
    assert not clouds[0].keys("packs/")
    assert {r.id for r in chunk_records(enigma) if r.pack is None} == {r.id for r in on_one}
    if erasure_coded:
        again = json.loads(enigma.ok("repair", "--json").out)
        assert again["healthy"] == chunks and again["objects"] == 0

    clouds[1].wipe()
    restore_exact(enigma, backup_id, source, tmp_path / "out2")

    if erasure_coded:
        # gc deletes every shard: it removes chunk_key(id) on each provider a chunk lists.
        enigma.ok("forget", backup_id)
        enigma.ok("gc")
        assert not any(c.keys() for c in clouds)


def test_unreachable_then_removed_provider(s3: dict[str, S3Server], tmp_path: Path) -> None:
    """A dead cloud: reads go around it, repair says it cannot write there (exit 1); taken
    out of the config, its shards move to the spare provider and the manifest follows."""
    clouds = [*three_clouds(s3, "moved"), Cloud("four", s3["weed"], "moved-four")]
    enigma = repository(tmp_path, ERASURE, clouds)
    source = source_tree(tmp_path)
    backup_id = backup(enigma, source)["backup_id"]
    on_two = len(clouds[1].keys())
    assert on_two > 5

    config = enigma.config_dir / "enigma.toml"
    text = config.read_text()
    dead = text.replace(f'bucket = "{clouds[1].bucket}"\nendpoint_url = "'
                        f'{s3["moto"].endpoint_url}"',
                        f'bucket = "{clouds[1].bucket}"\nendpoint_url = "http://127.0.0.1:9"')
    assert dead != text
    config.write_text(dead)
    fast = {"ENIGMA_RETRY_SECONDS": "1"}
    enigma.ok("restore", backup_id, str(tmp_path / "out1"), env=fast)
    assert snapshot(restored_root(tmp_path / "out1", source)) == snapshot(source)
    failed = enigma("repair", env=fast)
    assert failed.code == 1 and "unreachable" in failed.err
    assert failed.err.strip().splitlines()[-1].startswith("enigma: error: repair:")

    write_config(enigma, ERASURE, [clouds[0], clouds[2], clouds[3]])
    report = json.loads(enigma.ok("repair", "--json").out)
    assert report["moved"] == report["objects"] == on_two and report["ok"]
    status = json.loads(enigma.ok("status", "--json").out)
    assert status["redundancy"]["survives"] == 1 and status["redundancy"]["degraded_chunks"] == 0
    assert {row["name"]: row["chunks"] for row in status["providers"]} == {
        c.name: len(c.keys()) for c in (clouds[0], clouds[2], clouds[3])}
    clouds[0].wipe()  # the moved shards are sound: any two of three still restore
    enigma.ok("restore", backup_id, str(tmp_path / "out2"))
    assert snapshot(restored_root(tmp_path / "out2", source)) == snapshot(source)


@pytest.fixture(scope="module")
def local_enigma(tmp_path_factory: pytest.TempPathFactory) -> tuple[Enigma, str]:
    """An initialised repository on three local disks, and its [[providers]] tables."""
    base = tmp_path_factory.mktemp("local")
    enigma = Enigma(base / "config")
    enigma.config_dir.mkdir()
    providers = "".join(f'[[providers]]\nname = "{n}"\ntype = "Local"\npath = "{base / n}"\n'
                        for n in "abc")
    (enigma.config_dir / "enigma.toml").write_text(REPLICATE + providers)
    enigma.ok("init")
    return enigma, providers


@pytest.mark.parametrize(("policy", "fragments"), [
    (ERASURE.replace("parity_shards = 1", "parity_shards = 2"),
     ["[enigma.erasure]", "'data_shards' + 'parity_shards' = 4 needs 4 distinct providers"]),
    (REPLICATE.replace("copies = 2", "copies = 4"),
     ["[enigma.replication]", "'copies' = 4 needs 4 distinct providers"]),
    (REPLICATE.replace("copies = 2", "copies = 0"),
     ["enigma.toml:4: [enigma.replication] 'copies'", "integer >= 1"]),
    (ERASURE.replace("data_shards = 2", 'data_shards = "two"'),
     ["enigma.toml:4: [enigma.erasure] 'data_shards'", "integer >= 1"]),
    (ERASURE.replace("parity_shards", "parity"),
     ["[enigma.erasure] 'parity'", "unknown option (accepted: data_shards, parity_shards)"]),
    ('[enigma]\ndistribution = "Replicate"\nreplication = 3\n',
     ["[enigma] 'replication'", "must be a table"]),
], ids=["erasure-too-wide", "copies-too-many", "copies-zero", "shards-not-int",
        "unknown-key", "not-a-table"])
def test_config_mistakes_are_one_line(local_enigma: tuple[Enigma, str], tmp_path: Path,
                                      policy: str, fragments: list[str]) -> None:
    enigma, providers = local_enigma
    (enigma.config_dir / "enigma.toml").write_text(policy + providers)
    assert_clean_error(enigma("backup", str(tmp_path)), *fragments)


def test_a_resumed_backup_never_mixes_shards_of_two_encodings(tmp_path: Path) -> None:
    """A killed backup leaves shards it stored but never recorded. Reusing some of them
    beside freshly encoded ones would mix two encodings (each seals with its own nonce),
    leaving fewer than k+m shards of either: the re-run must encode every shard anew."""
    from enigma.manifest import BackupRecord

    repo = local_repo(tmp_path, ERASURE + SMALL_CDC, "abc")
    tree = make_tree(tmp_path / "src")
    first = run_backup(repo, [tree])
    ids = list(repo.manifest.iter_chunk_ids())
    assert ids
    # What a kill leaves: shards on a and b, none yet on c, no chunk rows, a backup that
    # never finished.
    repo.manifest.delete_backup(first.backup_id)
    repo.manifest.drop_unlinked_dirs()
    repo.manifest.delete_chunks(ids)
    assert not list(repo.manifest.iter_chunk_ids())
    for chunk_id in ids:
        object_path(tmp_path, "c", chunk_id).unlink()
    repo.manifest.begin_backup(BackupRecord("killed", 1.0, [str(tree)], "host"))

    run_backup(repo, [tree])
    for chunk_id in ids:
        sets = {erasure.parse(object_path(tmp_path, label, chunk_id).read_bytes()).set_id
                for label in "abc"}
        assert len(sets) == 1, f"chunk {chunk_id.hex()[:12]} mixes two encodings"
    run_restore(repo, run_backup(repo, [tree]).backup_id, tmp_path / "out")
    assert snapshot(restored_root(tmp_path / "out", tree)) == snapshot(tree)
