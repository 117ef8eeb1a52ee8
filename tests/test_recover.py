"""The machine is lost: `enigma recover` rebuilds keystore and manifest from the backends.

Every repository here spreads its chunks over a real S3 server (moto) and a local
directory outside the config dir, so deleting the config dir loses everything but
enigma.toml: exactly a lost laptop. Everything runs through the real CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    ENIGMA,
    PASSPHRASE,
    Enigma,
    assert_clean_error,
    make_tree,
    many_files,
    restored_root,
)
from helpers import snapshot as tree_state

pytest.importorskip("enigma_storage_s3", reason="needs plugins/storage-s3")

from servers import ServerProcess, free_port, wait_until
from servers.s3 import S3Server, moto_server

from enigma.chunkstore import chunk_key
from enigma.manifest import Manifest
from enigma.packs import pack_key
from enigma.recovery import snapshot_base

SMALL_CDC = "[enigma.chunk_strategy.Cdc]\nmin_size = 16384\navg_size = 65536\nmax_size = 262144\n"
SNAPSHOTS = "meta/manifest/"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with moto_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


class Repo:
    """A repository on moto + a local directory, and ways to reach into both backends."""

    def __init__(self, moto: S3Server, root: Path, tag: str, enigma: str = "") -> None:
        self.moto, self.root = moto, root
        self.bucket = f"recover-{tag}"
        self.local = root / "local-store"
        self.config_dir = root / "config"
        self.toml = (f"[enigma]\n{enigma}{SMALL_CDC}\n"
                     + moto.providers_toml("s3", self.bucket)
                     + f'[[providers]]\nname = "local"\ntype = "Local"\npath = "{self.local}"\n')
        self.config_dir.mkdir()
        (self.config_dir / "enigma.toml").write_text(self.toml)
        self.cli = Enigma(self.config_dir)

    def lose_machine(self) -> None:
        """Delete the whole config dir, then put back only enigma.toml."""
        shutil.rmtree(self.config_dir)
        self.config_dir.mkdir()
        (self.config_dir / "enigma.toml").write_text(self.toml)

    def s3_keys(self, prefix: str) -> set[str]:
        listed = self.moto.client().list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return {o["Key"] for o in listed.get("Contents", [])}

    def local_keys(self, prefix: str) -> set[str]:
        return {p.relative_to(self.local).as_posix() for p in self.local.rglob("*")
                if p.is_file() and p.relative_to(self.local).as_posix().startswith(prefix)}

    def snapshot_names(self) -> set[str]:
        """Snapshot object names; every provider holds the same set."""
        names = self.s3_keys(SNAPSHOTS)
        assert self.local_keys(SNAPSHOTS) == names
        return names

    def damage(self, key: str, provider: str, at: int | None = None) -> None:
        """Flip one byte of an object: at ``at``, or in the middle."""
        if provider == "local":
            path = self.local / key
            data = bytearray(path.read_bytes())
            data[len(data) // 2 if at is None else at] ^= 0x01
            path.write_bytes(bytes(data))
            return
        client = self.moto.client()
        data = bytearray(client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        data[len(data) // 2 if at is None else at] ^= 0x01
        client.put_object(Bucket=self.bucket, Key=key, Body=bytes(data))

    def copy_object(self, key: str, new_key: str) -> None:
        (self.local / new_key).write_bytes((self.local / key).read_bytes())
        self.moto.client().copy_object(Bucket=self.bucket, Key=new_key,
                                       CopySource={"Bucket": self.bucket, "Key": key})

    def delete(self, prefix: str) -> None:
        for key in self.s3_keys(prefix):
            self.moto.client().delete_object(Bucket=self.bucket, Key=key)
        for key in self.local_keys(prefix):
            (self.local / key).unlink()


def backup(cli: Enigma, source: Path) -> dict[str, Any]:
    # The last line: a run over a second prints status lines first (docs/json.md).
    return json.loads(cli.ok("backup", "--json", str(source)).out.strip().splitlines()[-1])


def test_lost_machine_recovers_restores_and_stays_incremental(moto: S3Server,
                                                             tmp_path: Path) -> None:
    repo = Repo(moto, tmp_path, "main")
    repo.cli.ok("init")
    keystore = (repo.config_dir / "keystore.enc").read_bytes()
    assert repo.s3_keys("keys/") == {"keys/keystore"} == repo.local_keys("keys/")
    assert (repo.local / "keys/keystore").read_bytes() == keystore
    source = make_tree(tmp_path / "src")
    first = backup(repo.cli, source)
    # A rotation re-mirrors the keystore: chunks sealed with key 2 stay restorable.
    repo.cli.ok("key", "rotate")
    rotated = (repo.config_dir / "keystore.enc").read_bytes()
    assert rotated != keystore and (repo.local / "keys/keystore").read_bytes() == rotated
    (source / "after-rotation.bin").write_bytes(os.urandom(200_000))
    second = backup(repo.cli, source)
    assert second["stats"]["chunks_new"] >= 1
    assert len(repo.snapshot_names()) == 2

    repo.lose_machine()
    recovered = repo.cli.ok("recover")
    assert "recovered the manifest from snapshot" in recovered.out
    assert "2 backups" in recovered.out
    assert "key versions [1, 2]" in recovered.err
    for name in ("keystore.enc", "manifest.db"):
        assert stat.S_IMODE((repo.config_dir / name).stat().st_mode) == 0o600
    assert not [p for p in repo.config_dir.iterdir() if p.name.startswith(".enigma-recovery")]

    listed = json.loads(repo.cli.ok("list", "--json").out)
    assert [b["id"] for b in listed] == [first["backup_id"], second["backup_id"]]
    dest = tmp_path / "out"
    repo.cli.ok("restore", second["backup_id"], str(dest))
    assert tree_state(restored_root(dest, source)) == tree_state(source)

    again = repo.cli.ok("backup", str(source))
    files = second["stats"]["files"]
    assert f"(0 new, 0 changed, {files} unchanged)" in again.err
    assert " 0 new chunks" in again.err

    # The recovered manifest holds backups: replacing it needs --force.
    assert_clean_error(repo.cli("recover"), "already holds 3 backups", "--force")


def test_corrupt_newest_snapshot_falls_back(moto: S3Server, tmp_path: Path) -> None:
    repo = Repo(moto, tmp_path, "fallback")
    repo.cli.ok("init")
    source = make_tree(tmp_path / "src")
    first = backup(repo.cli, source)
    older = repo.snapshot_names()
    (source / "more.txt").write_text("a second backup\n")
    second = backup(repo.cli, source)
    (newest,) = repo.snapshot_names() - older
    (oldest,) = older

    # One damaged copy: the same snapshot is read from the other provider.
    repo.damage(newest, "s3")
    repo.lose_machine()
    result = repo.cli.ok("recover")
    name = newest.removeprefix(SNAPSHOTS)
    assert f"skipped snapshot {name} on provider 's3': authentication failed" in result.err
    assert f"snapshot {name} (provider 'local'" in result.out

    # Both copies damaged, and an old snapshot renamed to pose as the newest (the name is
    # authenticated): recover says why it skipped each, and uses the previous one.
    repo.damage(newest, "local")
    forged = SNAPSHOTS + "29991231T235959Z-0badf00d"
    repo.copy_object(oldest, forged)
    repo.lose_machine()
    result = repo.cli.ok("recover")
    for provider in ("s3", "local"):
        assert (f"skipped snapshot 29991231T235959Z-0badf00d on provider '{provider}': "
                "authentication failed") in result.err
        assert f"skipped snapshot {name} on provider '{provider}'" in result.err
    assert f"snapshot {oldest.removeprefix(SNAPSHOTS)}" in result.out
    listed = json.loads(repo.cli.ok("list", "--json").out)
    assert [b["id"] for b in listed] == [first["backup_id"]]
    assert second["backup_id"] not in repo.cli.ok("list").out
    dest = tmp_path / "out"
    repo.cli.ok("restore", first["backup_id"], str(dest))
    (source / "more.txt").unlink()
    assert tree_state(restored_root(dest, source)) == tree_state(source)


def test_a_diff_is_recovered_over_its_base_from_any_provider(moto: S3Server,
                                                             tmp_path: Path) -> None:
    repo = Repo(moto, tmp_path, "diff")
    repo.cli.ok("init")
    source = many_files(make_tree(tmp_path / "src"))
    backup(repo.cli, source)
    older = repo.snapshot_names()
    (source / "more.txt").write_text("a second backup\n")
    second = backup(repo.cli, source)
    (diff,) = repo.snapshot_names() - older
    diff_name = diff.removeprefix(SNAPSHOTS)
    base_name = snapshot_base(diff_name)
    assert SNAPSHOTS + base_name in older

    # The base damaged on one provider: read from the other, under the diff.
    repo.damage(SNAPSHOTS + base_name, "s3")
    repo.lose_machine()
    result = repo.cli.ok("recover")
    assert f"recovered the manifest from snapshot {diff_name} (provider" in result.out
    assert "2 backups" in result.out
    dest = tmp_path / "out"
    repo.cli.ok("restore", second["backup_id"], str(dest))
    assert tree_state(restored_root(dest, source)) == tree_state(source)

    # The base gone everywhere: the diff is useless, and recover says why.
    repo.delete(SNAPSHOTS + base_name)
    repo.lose_machine()
    result = repo.cli.ok("recover")
    for provider in ("s3", "local"):
        assert (f"skipped snapshot {diff_name} on provider '{provider}': its base snapshot "
                f"{base_name} is on no provider") in result.err
    assert "no usable manifest snapshot" in result.err


@pytest.mark.parametrize("packed", [False, True], ids=["object", "in-pack"])
def test_no_snapshot_left_rebuilds_the_chunk_index(moto: S3Server, tmp_path: Path,
                                                   packed: bool) -> None:
    # One damaged chunk: a chunk object of its own (no packs), or one chunk inside a pack
    # whose other chunks and index stay good (more on packs: tests/test_packs.py).
    repo = Repo(moto, tmp_path, f"rebuild-{'packed' if packed else 'single'}",
                "" if packed else "pack_size = 0\n")
    repo.cli.ok("init")
    source = make_tree(tmp_path / "src")
    backup(repo.cli, source)
    status = json.loads(repo.cli.ok("status", "--json").out)
    repo.delete(SNAPSHOTS)
    if packed:
        with Manifest(repo.config_dir / "manifest.db") as manifest:
            record = next(r for r in manifest.iter_chunks()
                          if r.pack is not None and r.providers == ("local",))
        assert not repo.local_keys("chunks/")  # make_tree's chunks are all small
        repo.damage(pack_key(record.pack), "local", record.offset + record.stored_size // 2)
        victim = record.id.hex()
    else:
        assert not repo.local_keys("packs/") and not repo.s3_keys("packs/")
        victim = sorted(repo.local_keys("chunks/"))[0].rsplit("/", 1)[1]
        repo.damage(chunk_key(bytes.fromhex(victim)), "local")

    repo.lose_machine()
    result = repo.cli.ok("recover")
    assert "no usable manifest snapshot" in result.err
    assert f"skipped chunk {victim[:12]} (on provider 'local')" in result.err
    assert f"{status['chunks'] - 1} chunks authenticated, 1 damaged" in result.out
    assert json.loads(repo.cli.ok("list", "--json").out) == []
    assert json.loads(repo.cli.ok("status", "--json").out)["chunks"] == status["chunks"] - 1

    # The same tree again: only the damaged chunk is stored anew; the rest deduplicates.
    again = backup(repo.cli, source)
    assert again["stats"]["chunks_new"] == 1
    dest = tmp_path / "out"
    repo.cli.ok("restore", again["backup_id"], str(dest))
    assert tree_state(restored_root(dest, source)) == tree_state(source)


def test_no_snapshot_and_nothing_damaged_uploads_nothing(moto: S3Server,
                                                         tmp_path: Path) -> None:
    repo = Repo(moto, tmp_path, "rebuild-clean")
    repo.cli.ok("init")
    source = make_tree(tmp_path / "src")
    backup(repo.cli, source)
    repo.delete(SNAPSHOTS)
    assert repo.local_keys("packs/") and repo.s3_keys("packs/")  # rebuilt from pack indexes
    repo.lose_machine()
    assert "rebuilt the chunk index" in repo.cli.ok("recover").out
    again = backup(repo.cli, source)
    assert again["stats"]["chunks_new"] == 0 and again["stats"]["bytes_uploaded"] == 0


def test_wrong_passphrase_writes_nothing_and_init_refuses(moto: S3Server,
                                                          tmp_path: Path) -> None:
    repo = Repo(moto, tmp_path, "passphrase")
    repo.cli.ok("init")
    backup(repo.cli, make_tree(tmp_path / "src"))
    repo.lose_machine()
    result = repo.cli("recover", passphrase="not the passphrase")
    assert_clean_error(result, "wrong passphrase", "nothing was written")
    assert PASSPHRASE not in result.err
    assert sorted(p.name for p in repo.config_dir.iterdir()) == ["enigma.toml"]
    # init on the new machine would make new keys and overwrite the mirrored keystore.
    assert_clean_error(repo.cli("init"), "already holds a repository's keystore",
                       "enigma recover")
    assert (repo.local / "keys/keystore").exists()
    assert not (repo.config_dir / "keystore.enc").exists()


def test_serve_stores_snapshots_periodically(moto: S3Server, tmp_path: Path) -> None:
    pytest.importorskip("enigma_gateway_s3", reason="needs plugins/gateway-s3")
    import boto3
    from botocore.config import Config

    repo = Repo(moto, tmp_path, "serve")
    repo.cli.ok("init")
    port = free_port()
    with open(repo.config_dir / "enigma.toml", "a") as out:
        out.write(f'\n[s3_proxy]\nlisten_addr = "127.0.0.1:{port}"\naccess_key = "AK"\n'
                  'secret_key = "a-test-secret"\nsnapshot_interval = "1s"\n')
    log = tmp_path / "serve.log"
    server = ServerProcess([ENIGMA, "--config-dir", str(repo.config_dir), "serve"], log,
                           env={"ENIGMA_PASSPHRASE": PASSPHRASE, "ENIGMA_RETRY_SECONDS": "3"})
    process = server.start()
    try:
        wait_until(lambda: _port_open(port), timeout=30, what="enigma serve",
                   process=process, log=log)
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}",
                          aws_access_key_id="AK", aws_secret_access_key="a-test-secret",
                          region_name="us-east-1",
                          config=Config(s3={"addressing_style": "path"}))
        s3.create_bucket(Bucket="photos")
        s3.put_object(Bucket="photos", Key="a.jpg", Body=b"jpeg bytes" * 1000)
        wait_until(lambda: len(repo.local_keys(SNAPSHOTS)) >= 1, timeout=20,
                   what="a snapshot", process=process, log=log)
        # Nothing changes any more: within a few intervals the snapshots stop coming
        # (a gateway writing one per interval regardless never gets there).
        idle = wait_for_quiet(repo, window=2.5, timeout=15)
        s3.put_object(Bucket="photos", Key="b.jpg", Body=b"more bytes" * 1000)
        wait_until(lambda: len(repo.local_keys(SNAPSHOTS)) > len(idle), timeout=20,
                   what="a snapshot of the change", process=process, log=log)
    finally:
        server.stop()
    repo.lose_machine()
    result = repo.cli.ok("recover")
    assert "0 backups" in result.out
    status = json.loads(repo.cli.ok("status", "--json").out)
    assert status["chunks"] == 2


def wait_for_quiet(repo: Repo, *, window: float, timeout: float) -> set[str]:
    """The snapshot names once they stayed the same for ``window`` seconds."""
    def current() -> set[str]:  # both providers: an upload may be on one only so far
        return repo.s3_keys(SNAPSHOTS) | repo.local_keys(SNAPSHOTS)

    deadline = time.monotonic() + timeout
    names, since = current(), time.monotonic()
    while time.monotonic() - since < window:
        assert time.monotonic() < deadline, "the gateway keeps writing snapshots"
        time.sleep(0.2)
        now = current()
        if now != names:
            names, since = now, time.monotonic()
    return names


def _port_open(port: int) -> bool:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


def test_snapshot_compression_finds_ids_repeated_megabytes_apart(tmp_path: Path) -> None:
    """A manifest is mostly random 32-byte ids, each stored several times far apart
    (table, indexes). The snapshot's compression must reach back that far: with zstd
    level 3's 2 MiB window this file would not shrink at all."""
    import io

    from enigma import recovery

    ids = os.urandom(32 * 100_000)  # 3.2 MB of ids, each repeated 3.2 MB later
    db = tmp_path / "manifest-like.db"
    db.write_bytes(ids * 4)
    key = os.urandom(32)
    out = io.BytesIO()
    recovery.seal_snapshot(db, out, key, "20240101T000000Z-0123abcd", 1)
    assert len(out.getvalue()) < 0.3 * db.stat().st_size
    restored = tmp_path / "restored.db"
    recovery.open_snapshot(io.BytesIO(out.getvalue()), key, "20240101T000000Z-0123abcd",
                           restored, tmp_path / "scratch")
    assert restored.read_bytes() == db.read_bytes()
