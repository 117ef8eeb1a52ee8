"""Incremental backups: the file cache skips unchanged files; only new chunks are uploaded."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

from helpers import Enigma, make_tree, restored_root, snapshot

SMALL_CDC = "[enigma.chunk_strategy.Cdc]\nmin_size = 16384\navg_size = 65536\nmax_size = 262144\n"


def backup(enigma: Enigma, *args: str) -> dict:
    return json.loads(enigma.ok("backup", "--json", *args).out.splitlines()[-1])


def test_unchanged_files_are_not_read_and_changes_are_found(tmp_path: Path) -> None:
    enigma = Enigma(tmp_path / "config")
    enigma.config_dir.mkdir()
    (enigma.config_dir / "enigma.toml").write_text(f"[enigma]\n{SMALL_CDC}")
    enigma.ok("init")
    source = make_tree(tmp_path / "src")
    big = source / "big.bin"
    big.write_bytes(random.Random(7).randbytes(4 << 20))
    original = snapshot(source)
    first = backup(enigma, str(source))
    assert first["stats"]["files_new"] == first["stats"]["files"] > 5

    second = backup(enigma, str(source))["stats"]
    assert second["files_unchanged"] == second["files"] == first["stats"]["files"]
    assert second["bytes_read"] == 0 and second["chunks_new"] == 0
    assert second["bytes_uploaded"] == 0

    # Change: bytes inserted in the middle of the big file, one file rewritten with the
    # same size, one touched (mtime only), one new file, one deleted.
    data = big.read_bytes()
    big.write_bytes(data[: len(data) // 2] + b"inserted in the middle" + data[len(data) // 2:])
    (source / "docs" / "readme.txt").write_text("HELLO ENIGMA\n" * 1000)
    os.utime(source / "exec.sh", ns=(1_700_000_000_000_000_000,) * 2)
    (source / "new.txt").write_text("brand new")
    (source / "private.txt").unlink()
    third = backup(enigma, str(source))
    stats = third["stats"]
    assert stats["files_new"] == 1
    assert stats["files_changed"] == 3
    assert stats["files_unchanged"] == stats["files"] - 4
    assert stats["bytes_read"] == big.stat().st_size + 13_000 + len("#!/bin/sh\necho hi\n") + 9
    # CDC: an insert in a 4 MiB file re-stores a few chunks, not the file.
    assert 0 < stats["bytes_new"] < 1 << 20

    now = snapshot(source)
    for result, expected in ((third, now), (first, original)):
        dest = tmp_path / f"out-{result['backup_id']}"
        enigma.ok("restore", result["backup_id"], str(dest))
        assert snapshot(restored_root(dest, source)) == expected


def test_force_reads_everything_but_uploads_nothing(enigma: Enigma, tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src")
    backup(enigma, str(source))
    forced = backup(enigma, "--force", str(source))["stats"]
    assert forced["files_unchanged"] == 0
    assert forced["bytes_read"] == forced["bytes_total"] > 0
    assert forced["chunks_new"] == 0


def test_cache_follows_the_source_not_the_last_backup(enigma: Enigma, tmp_path: Path) -> None:
    one = make_tree(tmp_path / "one")
    two = tmp_path / "two"
    shutil.copytree(one, two, symlinks=True)
    backup(enigma, str(one))
    backup(enigma, str(two))  # another source in between
    again = backup(enigma, str(one))["stats"]
    assert again["files_unchanged"] == again["files"]


def test_log_records_the_counts(enigma: Enigma, tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src")
    result = backup(enigma, str(source))
    log = json.loads(enigma.ok("log", result["backup_id"], "--json").out)
    finished = [e for e in log if e["event"] == "finished"]
    assert len(finished) == 1
    message = finished[0]["message"]
    assert f"{result['stats']['files_new']} new" in message
    assert f"{result['stats']['bytes_uploaded']} bytes uploaded" in message
