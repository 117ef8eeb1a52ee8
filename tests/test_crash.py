"""Crash consistency: SIGKILL the real ``enigma backup``, ``enigma gc`` and ``enigma serve``
at seeded random moments; nothing acknowledged is lost and a re-run picks up where it was.

Also the locking model (docs/consistency.md): concurrent backups share the repository lock,
gc takes it alone, and a killed process's lock goes with it (the kernel drops a dead
process's flock), so gc runs right after a SIGKILLed backup.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from crash_support import (
    CrashRig,
    count_objects,
    kill_when,
    scan_manifest,
    stored_objects,
    summary_of,
)
from helpers import Enigma, assert_clean_error, make_tree, restored_root, snapshot

SEED = 20260901
BACKUP_TRIALS = 30


def test_backup_killed_at_random_moments(tmp_path: Path) -> None:
    rig = CrashRig(tmp_path / "rig", SEED)
    rig.calibrate()
    results = []
    for trial in range(BACKUP_TRIALS):
        result = rig.trial(by_time=trial % 3 == 2, check=trial % 10 == 0,
                           restore_dir=tmp_path / "out")
        assert not result.problems, (trial, result)
        assert result.uploaded_again == 0, (trial, result)
        results.append(result)
    mid_upload = [r for r in results if r.killed and r.stored_at_kill > 0]
    assert len(mid_upload) >= 10, results  # the kills really landed mid-backup
    # Packs are on and every chunk of the rig is packed: kills came between a pack's
    # upload and its record, and no re-run reused such a pack (trial checks that each
    # re-run wrote exactly its own packs), so they are orphans now, and gc takes exactly
    # them. Resuming single chunk objects: test_resumed_backup_reuses_unrecorded_objects.
    left = sum(r.left_packs for r in results)
    assert left > 0, results
    assert sum(r.resumed for r in results) == 0, results
    check = json.loads(rig.enigma.ok("check", "--json").out)
    assert check["ok"]
    assert len(check["orphans"].get("local", [])) == left, (left, check["orphans"])
    gc = json.loads(rig.enigma.ok("gc", "--json").out)
    assert (gc["chunks"], gc["packs"], gc["orphans"]) == (0, 0, left), gc
    assert json.loads(rig.enigma.ok("check", "--json").out)["orphans"] == {}


def test_resumed_backup_reuses_unrecorded_objects(tmp_path: Path) -> None:
    """The exact resume path: kill after some objects are stored, before any is recorded."""
    # Single chunk objects are what a resumed backup reuses; leftover packs are not reused
    # (test_backup_killed_at_random_moments, tests/test_packs.py): no packs here.
    rig = CrashRig(tmp_path / "rig", SEED + 1, pack_size=0)
    rig.backup()
    rig.mutate()
    before = count_objects(rig.enigma.config_dir)
    proc = rig.start("backup", str(rig.source))
    assert kill_when(proc, lambda: count_objects(rig.enigma.config_dir) >= before + 5, 60)
    stored = count_objects(rig.enigma.config_dir) - before
    objects = stored_objects(rig.enigma.config_dir)
    again = rig.backup()
    assert again["status"] == "complete"
    after = stored_objects(rig.enigma.config_dir)
    assert all(after[k] == v for k, v in objects.items()), "a stored object was rewritten"
    # Whatever the killed run stored is either recorded (a plain duplicate now) or reused.
    assert again["stats"]["chunks_resumed"] <= stored
    assert count_objects(rig.enigma.config_dir) - before == (
        stored + again["stats"]["chunks_new"] - again["stats"]["chunks_resumed"])
    assert not rig.restore_problems(again["backup_id"], tmp_path / "out")


@pytest.mark.parametrize("pack_size", [0, None], ids=["single-objects", "packs"])
def test_gc_killed_midway(tmp_path: Path, pack_size: int | None) -> None:
    # single-objects: killed between deletions of chunk objects. packs: a forgotten
    # backup's chunks share packs with kept ones, so gc repacks (new pack stored, records
    # moved, old pack deleted) and is killed at a random moment of it (seen: before any
    # write, between the new pack and the old one's deletion, after).
    rig = CrashRig(tmp_path / "rig", SEED + 2, pack_size=pack_size)
    rng = random.Random(SEED)
    for trial in range(2 if pack_size == 0 else 6):
        if pack_size is None:
            rig.mutate()  # every trial's forget frees chunks, so every gc repacks
        old = rig.backup()
        rig.mutate()
        keep = rig.backup()
        expected = snapshot(rig.source)
        rig.enigma.ok("forget", old["backup_id"])
        total = count_objects(rig.enigma.config_dir)
        proc = rig.start("gc")
        if pack_size == 0:
            target = total - rng.randint(0, 30)  # 0: before any object is deleted
            killed = kill_when(proc, lambda t=target: count_objects(rig.enigma.config_dir) <= t,
                               60)
        else:  # a random moment from start-up to about the end of gc (fast test KDF)
            started, delay = time.monotonic(), rng.uniform(0.0, 0.3)
            killed = kill_when(proc, lambda s=started, d=delay: time.monotonic() - s >= d, 60)
        assert not scan_manifest(rig.enigma.config_dir), trial
        check = rig.enigma.ok("check", "--json")
        assert json.loads(check.out)["ok"], (trial, killed)
        gc = json.loads(rig.enigma.ok("gc", "--json").out)
        if pack_size is None and not killed:
            assert gc["repacked"] == 0  # the killed-too-late run did the repacking
        assert not rig.restore_problems(keep["backup_id"], tmp_path / "out", expected), trial
        assert not json.loads(rig.enigma.ok("check", "--json").out)["orphans"]


# -- locking: concurrent backups, gc beside a backup, stale locks -----------------------------


def test_two_concurrent_backups_both_restore(tmp_path: Path) -> None:
    enigma = Enigma(tmp_path / "config")
    enigma.ok("init")
    trees = []
    for name, seed in (("a", 1), ("b", 2)):
        tree = make_tree(tmp_path / name, seed=seed)
        rng = random.Random(seed)
        for i in range(40):
            (tree / f"r{i}.bin").write_bytes(rng.randbytes(rng.randint(1_000, 60_000)))
        (tree / "shared.bin").write_bytes(random.Random(99).randbytes(400_000))  # dedup race
        trees.append(tree)
    procs = [subprocess.Popen([*cli(enigma), "backup", "--json", str(t)], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
             for t in trees]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    for tree, (out, _err) in zip(trees, outputs, strict=True):
        dest = tmp_path / f"out-{tree.name}"
        enigma.ok("restore", summary_of(out)["backup_id"], str(dest))
        assert snapshot(restored_root(dest, tree)) == snapshot(tree)
    assert json.loads(enigma.ok("check", "--json").out)["ok"]


def test_gc_beside_a_running_backup_is_refused(tmp_path: Path) -> None:
    rig = CrashRig(tmp_path / "rig", SEED + 3)
    before = count_objects(rig.enigma.config_dir)
    proc = rig.start("backup", str(rig.source))
    refused = None
    while proc.poll() is None:
        if count_objects(rig.enigma.config_dir) > before:
            refused = rig.enigma("gc")
            break
        time.sleep(0.001)
    assert proc.wait(timeout=120) == 0
    if refused is not None and refused.code != 0:  # else the backup finished first
        assert_clean_error(refused, "busy")
    backup_id = json.loads(rig.enigma.ok("list", "--json").out)[-1]["id"]
    assert not rig.restore_problems(backup_id, tmp_path / "out")
    # The same, deterministically: while anyone holds the lock shared, gc is refused at
    # once, and another backup still runs (backups share the lock).
    from enigma.lock import repository_lock

    with repository_lock(rig.enigma.config_dir, exclusive=False):
        assert_clean_error(rig.enigma("gc"), "busy (a backup is running)")
        rig.mutate()
        assert rig.backup()["status"] == "complete"
    rig.enigma.ok("gc")


def test_gc_runs_after_a_killed_backup(tmp_path: Path) -> None:
    """flock locks belong to open files: the kernel drops a SIGKILLed holder's lock."""
    rig = CrashRig(tmp_path / "rig", SEED + 4)
    before = count_objects(rig.enigma.config_dir)
    proc = rig.start("backup", str(rig.source))
    # Any new object (with packs, a backup this size stores only a few) means it is midway.
    assert kill_when(proc, lambda: count_objects(rig.enigma.config_dir) > before, 60)
    gc = rig.enigma.ok("gc", "--json")
    assert json.loads(gc.out)["stale_backups"], gc.out  # the killed one, now known dead
    assert json.loads(rig.enigma.ok("check", "--json").out)["ok"]
    summary = rig.backup()
    assert not rig.restore_problems(summary["backup_id"], tmp_path / "out")


def cli(enigma: Enigma) -> list[str]:
    from helpers import ENIGMA

    return [ENIGMA, "--config-dir", str(enigma.config_dir)]


def cli_env() -> dict[str, str]:
    from crash_support import cli_env as env

    return env()


# -- the gateway killed during multipart uploads ---------------------------------------------


def _gateway_support() -> Any:
    pytest.importorskip("enigma_gateway_s3")
    pytest.importorskip("boto3")
    tests = Path(__file__).resolve().parents[1] / "plugins" / "gateway-s3" / "tests"
    if str(tests) not in sys.path:
        sys.path.insert(0, str(tests))
    import gateway_support

    return gateway_support


def _restart(support: Any, gateway: Any) -> None:
    from servers import wait_until

    proc = gateway.process.start()
    wait_until(lambda: support.port_open(gateway.port), timeout=30, what="enigma serve",
               process=proc, log=gateway.process.log)


def test_gateway_killed_during_multipart_upload(tmp_path: Path) -> None:
    support = _gateway_support()
    rng = random.Random(SEED)
    gateway = support.start_gateway(tmp_path)
    try:
        s3 = gateway.client()
        s3.create_bucket(Bucket="crash")
        part = 5 * 1024 * 1024
        done: dict[str, str] = {}
        for trial in range(2):
            small = rng.randbytes(100_000)
            s3.put_object(Bucket="crash", Key=f"done/{trial}", Body=small)
            done[f"done/{trial}"] = hashlib.md5(small).hexdigest()
            parts = [rng.randbytes(part), rng.randbytes(part)]
            upload = s3.create_multipart_upload(Bucket="crash", Key=f"mp/{trial}")["UploadId"]
            etag1 = s3.upload_part(Bucket="crash", Key=f"mp/{trial}", UploadId=upload,
                                   PartNumber=1, Body=parts[0])["ETag"]
            spare = s3.create_multipart_upload(Bucket="crash", Key=f"spare/{trial}")["UploadId"]

            def send(client: Any, key: str, upload: str, body: bytes) -> None:
                with contextlib.suppress(Exception):  # the gateway is killed under it
                    client.upload_part(Bucket="crash", Key=key, UploadId=upload,
                                       PartNumber=2, Body=body)

            sender = threading.Thread(target=send, args=(s3, f"mp/{trial}", upload, parts[1]))
            sender.start()
            time.sleep(rng.uniform(0.0, 0.4))
            gateway.process.kill()
            sender.join(timeout=60)
            _restart(support, gateway)
            s3 = gateway.client()
            for key, digest in done.items():  # every acknowledged object is intact
                body = s3.get_object(Bucket="crash", Key=key)["Body"].read()
                assert hashlib.md5(body).hexdigest() == digest, (trial, key)
            uploads = {u["UploadId"] for u in
                       s3.list_multipart_uploads(Bucket="crash").get("Uploads", [])}
            assert {upload, spare} <= uploads
            listed = {p["PartNumber"]: p["ETag"] for p in
                      s3.list_parts(Bucket="crash", Key=f"mp/{trial}", UploadId=upload)
                      .get("Parts", [])}
            assert listed.get(1) == etag1  # the acknowledged part survived
            if 2 in listed:  # a part the kill interrupted is whole or absent, never torn
                assert listed[2].strip('"') == hashlib.md5(parts[1]).hexdigest()
            etag2 = s3.upload_part(Bucket="crash", Key=f"mp/{trial}", UploadId=upload,
                                   PartNumber=2, Body=parts[1])["ETag"]
            s3.complete_multipart_upload(
                Bucket="crash", Key=f"mp/{trial}", UploadId=upload,
                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag1},
                                           {"PartNumber": 2, "ETag": etag2}]})
            body = s3.get_object(Bucket="crash", Key=f"mp/{trial}")["Body"].read()
            assert body == parts[0] + parts[1]
            done[f"mp/{trial}"] = hashlib.md5(body).hexdigest()
            s3.abort_multipart_upload(Bucket="crash", Key=f"spare/{trial}", UploadId=spare)
            assert spare not in {u["UploadId"] for u in s3.list_multipart_uploads(
                Bucket="crash").get("Uploads", [])}
        assert json.loads(gateway.runner.ok("check", "--json").out)["ok"]
    finally:
        gateway.process.stop()
