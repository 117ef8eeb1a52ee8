"""`enigma check`: the manifest against what real backends hold, and the data itself.

Damage is done to the real stored objects (local disk, and an S3 bucket on moto's server),
never simulated: a deleted object, a cut-short one, a flipped byte (same size: only
reading finds it) and an orphan. Each report must name the backup files and the gateway
objects a bad chunk hurts; partitions n/t must read every chunk exactly once.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import Enigma, assert_clean_error, make_tree, open_repo

from enigma.chunkstore import ChunkStore, chunk_key
from enigma.lock import repository_lock
from enigma.manifest import BucketRecord, ChunkRef, Manifest, ObjectRecord

SMALL_CDC = "[enigma.chunk_strategy.Cdc]\nmin_size = 16384\navg_size = 65536\nmax_size = 262144\n"


def put_gateway_object(config_dir: Path, bucket: str, key: str, data: bytes) -> bytes:
    """Store an object the way the S3 gateway does (shared lock, chunk stored and synced
    before its record, then the object); returns its chunk id."""
    with open_repo(config_dir) as repo, repository_lock(config_dir, exclusive=False):
        stored = ChunkStore(repo).put(data)
        for provider in repo.providers.values():
            provider.sync()
        if stored.record is not None:
            repo.manifest.add_chunks([stored.record])
        if repo.manifest.get_bucket(bucket) is None:
            repo.manifest.create_bucket(BucketRecord(bucket, "tester", time.time()))
        repo.manifest.put_object(ObjectRecord(bucket, key, len(data), "etag", time.time(),
                                              chunks=[ChunkRef(stored.chunk_id, 0, len(data))]))
        return stored.chunk_id


def without_packs(config_dir: Path) -> None:
    """Every chunk its own object (``pack_size = 0``): these tests damage one chunk's
    object at a time; damaged, lost and orphan packs are covered in tests/test_packs.py."""
    config = config_dir / "enigma.toml"
    text = config.read_text()
    assert "[enigma]\n" in text and "pack_size" not in text
    config.write_text(text.replace("[enigma]\n", "[enigma]\npack_size = 0\n", 1))


def file_chunks(config_dir: Path, backup_id: str, path_suffix: str) -> list[bytes]:
    """The chunk ids of the one file whose path ends with ``path_suffix``."""
    with Manifest(config_dir / "manifest.db") as manifest:
        [entry] = [e for e in manifest.iter_files(backup_id) if e.path.endswith(path_suffix)]
    return [ref.chunk_id for ref in entry.chunks]


def local_object(config_dir: Path, chunk_id: bytes) -> Path:
    return config_dir / "storage" / chunk_key(chunk_id)


def problems_by_kind(report: dict[str, Any]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for problem in report["problems"]:
        found.setdefault(problem["kind"], set()).add(problem["chunk"])
    return found


def check_json(enigma: Enigma, *args: str, ok: bool) -> dict[str, Any]:
    result = enigma("check", "--json", *args)
    assert result.code == (0 if ok else 1), result
    if not ok:
        assert_clean_error(result, "check:")
    return json.loads(result.out)


@pytest.fixture
def damaged(tmp_path: Path) -> dict[str, Any]:
    """A backed-up tree and a gateway object, then four kinds of damage on local disk."""
    enigma = Enigma(tmp_path / "config")
    enigma.ok("init")
    without_packs(enigma.config_dir)
    source = make_tree(tmp_path / "src")
    (source / "more.bin").write_bytes(random.Random(5).randbytes(200_000))
    summary = enigma.ok("backup", "--json", str(source)).out.splitlines()[-1]
    backup_id = json.loads(summary)["backup_id"]
    object_chunk = put_gateway_object(enigma.config_dir, "photos", "2024/cat.jpg",
                                      random.Random(6).randbytes(50_000))
    clean = check_json(enigma, "--read-data", ok=True)
    assert clean["problems"] == [] and clean["orphans"] == {}
    assert clean["read"] == clean["chunks"] == clean["sizes_checked"] >= 6

    config = enigma.config_dir
    [missing] = file_chunks(config, backup_id, "docs/readme.txt")
    [shortened] = file_chunks(config, backup_id, "docs/nested/data.bin")  # copy.bin too
    [spare] = file_chunks(config, backup_id, "more.bin")
    local_object(config, missing).unlink()
    path = local_object(config, shortened)
    path.write_bytes(path.read_bytes()[:-7])
    path = local_object(config, object_chunk)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x40
    path.write_bytes(bytes(blob))
    orphan = local_object(config, bytes(32))
    orphan.parent.mkdir(exist_ok=True)
    shutil.copy(local_object(config, spare), orphan)  # a sealed chunk under an unknown id
    return {"enigma": enigma, "backup": backup_id, "missing": missing.hex(),
            "shortened": shortened.hex(), "flipped": object_chunk.hex(),
            "orphan": chunk_key(bytes(32)), "chunks": clean["chunks"]}


def test_check_reports_missing_short_and_orphans_and_whom_they_hurt(
        damaged: dict[str, Any]) -> None:
    enigma, backup = damaged["enigma"], damaged["backup"]
    report = check_json(enigma, ok=False)
    assert problems_by_kind(report) == {"missing": {damaged["missing"]},
                                        "size": {damaged["shortened"]}}
    assert report["orphans"] == {"local": [damaged["orphan"]]}
    assert report["read"] == 0 and report["bytes_read"] == 0
    files = {p["chunk"]: [(f["backup"], f["path"].split("/src/")[1]) for f in p["files"]]
             for p in report["problems"]}
    assert files[damaged["missing"]] == [(backup, "docs/readme.txt")]
    assert files[damaged["shortened"]] == [(backup, "docs/nested/data.bin"),
                                           (backup, "docs/nested/deeper/copy.bin")]

    text = enigma("check")
    assert text.code == 1 and not text.out
    lines = text.err.splitlines()
    assert f"missing: chunk {damaged['missing']}: missing on provider 'local'" in lines
    assert any(line.startswith(f"size: chunk {damaged['shortened']}: object on provider "
                               "'local' is shorter than the recorded") for line in lines)
    assert any(line.startswith(f"  used by file {backup} ") and
               line.endswith("docs/nested/deeper/copy.bin") for line in lines)
    assert f"orphan: {damaged['orphan']} on provider 'local'" in lines
    assert lines[-1].startswith("enigma: error: check: 2 of ")
    assert "(1 missing, 1 size); 3 backed-up file(s) use them" in lines[-1]


def test_read_data_finds_a_flipped_byte_and_names_the_gateway_object(
        damaged: dict[str, Any]) -> None:
    report = check_json(damaged["enigma"], "--read-data", ok=False)
    kinds = problems_by_kind(report)
    assert kinds["damaged"] == {damaged["flipped"]}  # same size: only reading finds it
    assert report["read"] == damaged["chunks"]
    [problem] = [p for p in report["problems"] if p["chunk"] == damaged["flipped"]]
    assert "authentication failed" in problem["detail"]
    assert problem["objects"] == [{"bucket": "photos", "key": "2024/cat.jpg"}]
    assert problem["files"] == []
    text = damaged["enigma"]("check", "--read-data")
    assert "  used by object photos/2024/cat.jpg" in text.err.splitlines()
    assert "and 1 gateway object(s) use them" in text.err.splitlines()[-1]


def test_partitions_read_every_chunk_exactly_once(damaged: dict[str, Any]) -> None:
    enigma, total = damaged["enigma"], damaged["chunks"]
    reads, finds = 0, 0
    for n in (1, 2, 3):
        report = check_json(enigma, "--read-data-subset", f"{n}/3", ok=False)
        reads += report["read"]
        finds += damaged["flipped"] in problems_by_kind(report).get("damaged", set())
    assert reads == total and finds == 1
    half = check_json(enigma, "--read-data-subset", "50%", ok=False)
    assert half["read"] == round(total / 2) and half["read_subset"] == "50%"
    assert check_json(enigma, "--read-data-subset", "0.1%", ok=False)["read"] == 1


def test_a_clean_repository_passes_with_one_summary_line(enigma: Enigma,
                                                         tmp_path: Path) -> None:
    empty = enigma.ok("check")
    assert empty.out.startswith("check: 0 chunks") and not empty.err
    enigma.ok("backup", str(make_tree(tmp_path / "src")))
    result = enigma.ok("check", "--read-data-subset", "2/2")
    assert result.out.count("\n") == 1 and "no errors" in result.out and not result.err


@pytest.mark.parametrize(("args", "fragment"), [
    (("--read-data-subset", "0%"), "use N% (0 < N <= 100"),
    (("--read-data-subset", "150%"), "'150%'"),
    (("--read-data-subset", "4/3"), "n/t (1 <= n <= t"),
    (("--read-data-subset", "0/3"), "'0/3'"),
    (("--read-data-subset", "half"), "'half'"),
    (("--read-data", "--read-data-subset", "1/2"), "not both"),
])
def test_bad_subset_is_one_line(enigma: Enigma, args: tuple[str, ...], fragment: str) -> None:
    assert_clean_error(enigma("check", *args), fragment)


def test_check_against_a_real_s3_server(tmp_path: Path) -> None:
    """Two providers (moto's S3 server and local disk): a chunk deleted from the bucket is
    missing on 's3' only, an object left in the bucket is an orphan there."""
    pytest.importorskip("enigma_storage_s3", reason="needs plugins/storage-s3")
    from servers.s3 import moto_server

    with moto_server(tmp_path / "moto") as s3:
        enigma = Enigma(tmp_path / "config")
        enigma.config_dir.mkdir()
        (enigma.config_dir / "enigma.toml").write_text(
            # pack_size = 0: one object per chunk, damaged one at a time (packs are
            # covered in tests/test_packs.py).
            f'[enigma]\ndistribution = "RoundRobin"\npack_size = 0\n{SMALL_CDC}\n'
            + s3.providers_toml("s3", "enigma-check")
            + f'[[providers]]\nname = "disk"\ntype = "Local"\npath = "{tmp_path / "disk"}"\n')
        enigma.ok("init")
        source = tmp_path / "src"
        source.mkdir()
        (source / "big.bin").write_bytes(random.Random(9).randbytes(1_500_000))
        enigma.ok("backup", str(source))
        clean = check_json(enigma, "--read-data", ok=True)
        assert set(clean["listed"]) == {"s3", "disk"} and min(clean["listed"].values()) > 3

        client = s3.client()
        keys = sorted(o["Key"] for o in client.list_objects_v2(
            Bucket="enigma-check", Prefix="chunks/")["Contents"])
        client.delete_object(Bucket="enigma-check", Key=keys[0])
        body = client.get_object(Bucket="enigma-check", Key=keys[1])["Body"].read()
        client.put_object(Bucket="enigma-check", Key=keys[1], Body=body + b"!")
        client.put_object(Bucket="enigma-check", Key=chunk_key(b"\xee" * 32), Body=b"x")

        report = check_json(enigma, "--read-data", ok=False)
        by_kind = {p["kind"]: p for p in report["problems"]}
        assert by_kind["missing"]["chunk"] == keys[0].rsplit("/", 1)[1]
        assert by_kind["missing"]["provider"] == "s3"
        assert by_kind["size"]["chunk"] == keys[1].rsplit("/", 1)[1]
        assert "longer than the recorded" in by_kind["size"]["detail"]
        assert set(by_kind) == {"missing", "size"}  # no read where every copy is known bad
        assert all(p["files"][0]["path"].endswith("src/big.bin") for p in report["problems"])
        assert report["orphans"] == {"s3": [chunk_key(b"\xee" * 32)]}

        # A provider that cannot be listed is named, and the others are still checked.
        config = enigma.config_dir / "enigma.toml"
        config.write_text(config.read_text().replace(s3.endpoint_url, "http://127.0.0.1:9"))
        down = enigma("check", "--json", env={"ENIGMA_RETRY_SECONDS": "0.5"})
        assert down.code == 1 and "1 provider(s) unreachable" in down.err
        report = json.loads(down.out)
        assert list(report["unreachable"]) == ["s3"] and report["problems"] == []
        assert list(report["listed"]) == ["disk"] and report["sizes_checked"] > 3
