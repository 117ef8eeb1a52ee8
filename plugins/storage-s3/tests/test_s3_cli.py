"""End to end through the real ``enigma`` CLI against a real SeaweedFS: init creates the
bucket, backup/status/verify/restore/gc work, and a server that dies mid-backup leaves a
clean error and a repository that a re-run completes without re-uploading."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from helpers import (
    ENIGMA,
    PASSPHRASE,
    Enigma,
    Result,
    assert_clean_error,
    make_tree,
    manifest_objects,
    restored_root,
    snapshot,
)
from servers import free_port
from servers.s3 import S3Server, seaweedfs_server


def configure(runner: Enigma, server: S3Server, bucket: str, *, name: str = "seaweed",
              endpoint_url: str | None = None, access_key: str | None = None,
              secret_key: str | None = None) -> Path:
    """Init a repository (keystore), then point it at S3 with an ``enc:`` secret."""
    runner.ok("init")
    secret = runner.ok("encrypt-cred", secret_key or server.secret_key).out.strip()
    assert secret.startswith("enc:")
    config = runner.config_dir / "enigma.toml"
    options = {"secret_key": secret}
    if endpoint_url:
        options["endpoint_url"] = endpoint_url
    if access_key:
        options["access_key"] = access_key
    table = server.providers_toml(name, bucket, **options)
    config.write_text(config.read_text() + "\n" + table)
    return config


def summary(out: str) -> dict:
    """``backup --json``'s result: the last line (status lines precede it after 1 s)."""
    return json.loads(out.strip().splitlines()[-1])


def chunk_objects(server: S3Server, bucket: str) -> set[str]:
    """Every chunk object and pack object in the bucket."""
    paginator = server.client().get_paginator("list_objects_v2")
    return {item["Key"] for prefix in ("chunks/", "packs/")
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
            for item in page.get("Contents", ())}


def test_backup_status_verify_restore_gc(seaweed: S3Server, tmp_path: Path,
                                         bucket_name: Callable[[str], str]) -> None:
    runner = Enigma(tmp_path / "config")
    bucket = bucket_name("cli")
    config = configure(runner, seaweed, bucket)
    assert seaweed.secret_key not in config.read_text()

    created = runner.ok("init")
    assert "provider 'seaweed' (s3): created" in created.err
    assert "provider 'seaweed' (s3): ready" in runner.ok("init").err

    source = make_tree(tmp_path / "src", big_file_size=6 << 20)
    first = summary(runner.ok("backup", "--json", str(source)).out)
    assert first["status"] == "complete"

    status = json.loads(runner.ok("status", "--json").out)
    (row,) = status["providers"]
    assert row["name"] == "seaweed" and row["type"] == "S3Compatible"
    assert row["reachable"] is True and row["error"] == ""
    assert row["chunks"] == status["chunks"] > 0 and row["bytes"] > 0
    assert chunk_objects(seaweed, bucket) == manifest_objects(runner.config_dir)[0]
    text = runner.ok("status").out
    assert "seaweed" in text and "reachable" in text and "UNREACHABLE" not in text

    runner.ok("verify", first["backup_id"])
    dest = tmp_path / "restored"
    runner.ok("restore", first["backup_id"], str(dest))
    assert snapshot(restored_root(dest, source)) == snapshot(source)

    # change a file, back up again, forget the first backup: gc deletes its chunk from S3
    (source / "big.bin").write_bytes(random.Random(7).randbytes(3 << 20))
    second = summary(runner.ok("backup", "--json", str(source)).out)
    runner.ok("forget", first["backup_id"])
    gc = json.loads(runner.ok("gc", "--json").out)
    assert gc["chunks"] >= 1 and gc["orphans"] == 0
    after = json.loads(runner.ok("status", "--json").out)
    assert after["providers"][0]["chunks"] == after["chunks"] > 0
    assert chunk_objects(seaweed, bucket) == manifest_objects(runner.config_dir)[0]
    runner.ok("verify", second["backup_id"])
    again = tmp_path / "restored-again"
    runner.ok("restore", second["backup_id"], str(again))
    assert snapshot(restored_root(again, source)) == snapshot(source)


def test_permanent_errors_are_one_line(seaweed: S3Server, tmp_path: Path,
                                       bucket_name: Callable[[str], str]) -> None:
    """Wrong secret and read-only credentials: commands stop at once, naming the cause."""
    wrong = Enigma(tmp_path / "wrong")
    bucket = seaweed.create_bucket(bucket_name("wrong"))
    configure(wrong, seaweed, bucket, secret_key="not-the-secret")
    assert_init_fails(wrong("init"), f"s3 bucket '{bucket}'",
                      "signature does not match (check secret_key)")
    source = make_tree(tmp_path / "src")
    started = time.monotonic()
    result = wrong("backup", str(source))
    assert time.monotonic() - started < 20  # permanent: no retrying with backoff
    assert_clean_error(result, "provider 'seaweed'", "check secret_key")
    assert "not-the-secret" not in result.err + result.out

    reader = Enigma(tmp_path / "reader")
    configure(reader, seaweed, bucket_name("reader"), access_key=seaweed.readonly_key,
              secret_key=seaweed.readonly_secret)
    assert_init_fails(reader("init"), "does not exist", "may not create", "s3:CreateBucket")


def assert_init_fails(result: Result, *fragments: str) -> None:
    """init reports progress on stderr; its last line is the one-line error."""
    assert result.code != 0 and "Traceback" not in result.err, result
    last = result.err.strip().splitlines()[-1]
    assert last.startswith("enigma: error: "), result.err
    for fragment in fragments:
        assert fragment in last, f"{fragment!r} not in {last!r}"


def test_status_shows_an_unreachable_provider(seaweed: S3Server, tmp_path: Path) -> None:
    runner = Enigma(tmp_path / "config")
    port = free_port()
    configure(runner, seaweed, "enigma-nowhere", endpoint_url=f"http://127.0.0.1:{port}")
    status = json.loads(runner.ok("status", "--json").out)
    (row,) = status["providers"]
    assert row["reachable"] is False
    assert f"http://127.0.0.1:{port}" in row["error"] and "connection refused" in row["error"]
    assert "UNREACHABLE" in runner.ok("status").out


def test_server_dies_mid_backup(tmp_path: Path) -> None:
    """Kill SeaweedFS while a backup uploads: a clean failure, a consistent manifest, and
    a re-run (server back on the same port and data) that uploads only what is missing."""
    source = tmp_path / "src"
    source.mkdir()
    rng = random.Random(4)
    for n in range(48):  # 48 MiB of 1 MiB files: one chunk each, many uploads
        (source / f"file-{n:02d}.bin").write_bytes(rng.randbytes(1 << 20))

    with seaweedfs_server(tmp_path / "weed") as server:
        runner = Enigma(tmp_path / "config")
        bucket = "enigma-dies"
        config = configure(runner, server, bucket)
        # A minimum chunk of 1 MiB keeps each file one chunk (the default is 512 KiB).
        config.write_text(re.sub(r"(?m)^min_size = .*$", "min_size = 1048576",
                                 config.read_text()))
        runner.ok("init")

        env = {k: v for k, v in os.environ.items() if not k.startswith("ENIGMA_")}
        env["ENIGMA_PASSPHRASE"] = PASSPHRASE
        env["ENIGMA_RETRY_SECONDS"] = "3"  # the server stays dead: give up quickly
        backup = subprocess.Popen(
            [ENIGMA, "--config-dir", str(runner.config_dir), "backup", "--json", str(source)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env)
        client = server.client()
        deadline = time.monotonic() + 60
        stored = 0
        while stored < 2:  # some chunks are up: now the server "crashes"
            assert backup.poll() is None, "the backup ended before the server was killed"
            assert time.monotonic() < deadline, "no chunk reached the server in 60 s"
            stored = client.list_objects_v2(Bucket=bucket, Prefix="chunks/")["KeyCount"]
            time.sleep(0.02)
        server.kill()
        out, err = backup.communicate(timeout=120)
        failed = Result(backup.returncode, out, err)
        assert_clean_error(failed, "provider 'seaweed'", f"s3 bucket '{bucket}'")
        (record,) = json.loads(runner.ok("list", "--json").out)
        assert record["status"] == "failed"

        server.start()  # same ports, same data directory
        rerun = summary(runner.ok("backup", "--json", str(source)).out)
        assert rerun["status"] == "complete"
        stats = rerun["stats"]
        assert stats["chunks"] == 48
        assert 0 < stats["chunks_new"] < stats["chunks"], stats
        statuses = [b["status"] for b in json.loads(runner.ok("list", "--json").out)]
        assert statuses == ["failed", "complete"]

        runner.ok("verify", rerun["backup_id"])
        dest = tmp_path / "restored"
        runner.ok("restore", rerun["backup_id"], str(dest))
        assert snapshot(restored_root(dest, source)) == snapshot(source)
