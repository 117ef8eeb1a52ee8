"""Bad input gets one line on stderr, a non-zero exit, no traceback, and loses nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Enigma, assert_clean_error, chunk_files, make_tree, restored_root, snapshot

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_wrong_or_missing_passphrase(enigma: Enigma, tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src")
    assert_clean_error(enigma("backup", str(source), passphrase="not it"), "wrong passphrase")
    no_pass = Enigma(enigma.config_dir, passphrase=None)
    assert_clean_error(no_pass("backup", str(source)), "passphrase is required")
    assert json.loads(enigma.ok("list", "--json").out) == []  # nothing half-recorded


def test_missing_config(tmp_path: Path) -> None:
    result = Enigma(tmp_path / "nothing-here")("list")
    assert_clean_error(result, "no configuration at", "enigma init")


def test_malformed_toml_names_file_and_line(enigma: Enigma) -> None:
    config = enigma.config_dir / "enigma.toml"
    config.write_text('[enigma]\nkey_provider = "local"\ndistribution = \n')
    assert_clean_error(enigma("list"), str(config), "line 3")


def test_bad_provider_option_names_table_key_and_line(enigma: Enigma) -> None:
    config = enigma.config_dir / "enigma.toml"
    config.write_text('[enigma]\n\n[[providers]]\nname = "a"\ntype = "Local"\n'
                      'path = "/tmp/x"\n\n[[providers]]\nname = "b"\ntype = "local"\n'
                      'path = "/tmp/y"\ncolour = "blue"\n')
    assert_clean_error(enigma("status"), f"{config}:12", "[[providers]] #2 'colour'",
                       "unknown option")
    config.write_text('[enigma]\n[[providers]]\nname = "a"\ntype = "Local"\nweight = 0\n')
    assert_clean_error(enigma("status"), f"{config}:5", "'weight'", ">= 1")
    config.write_text('[enigma]\ndistribution = "Spiral"\n')
    assert_clean_error(enigma("backup", str(config)), "unknown distribution policy 'Spiral'",
                       "round-robin, weighted")
    config.write_text('[enigma]\n[enigma.chunk_strategy.Cdc]\navg_size = 12\n')
    assert_clean_error(enigma("backup", str(config)), f"{config}:2",
                       "[enigma.chunk_strategy.Cdc]")


def test_missing_plugin_names_the_package(enigma: Enigma) -> None:
    core_only = {"ENIGMA_LOAD_PLUGINS": ""}  # as if no plugin distribution were installed
    config = enigma.config_dir / "enigma.toml"
    config.write_text('[enigma]\n[[providers]]\nname = "g"\ntype = "Gcs"\nbucket = "b"\n')
    assert_clean_error(enigma("status", env=core_only),
                       "unknown storage type 'Gcs' (installed: local)",
                       "pip install enigma-storage-gcs")
    config.write_text('[enigma]\n[enigma.chunk_strategy.Fixed]\nsize = 65536\n')
    assert_clean_error(enigma("backup", str(config), env=core_only), "unknown chunker 'Fixed'",
                       "pip install enigma-chunker-fixed")


def test_seed_reference_config_loads_unchanged(tmp_path: Path) -> None:
    runner = Enigma(tmp_path / "config")
    runner.config_dir.mkdir()
    shutil.copy(EXAMPLES / "enigma.toml", runner.config_dir / "enigma.toml")
    shown = json.loads(runner.ok("config", "--json").out)
    assert [p["type"] for p in shown["providers"]] == ["S3", "S3Compatible", "Azure", "Gcs",
                                                       "Local"]
    assert shown["enigma"]["chunk_strategy"] == {
        "Cdc": {"min_size": 524288, "avg_size": 1048576, "max_size": 8388608}}
    assert shown["s3_proxy"]["secret_key"] == "enc:…"
    assert shown["raft"]["peers"][1]["addr"] == "10.0.0.3:7000"
    assert "minioadmin" not in json.dumps(shown)
    assert_clean_error(runner("status", env={"ENIGMA_LOAD_PLUGINS": ""}),
                       "unknown storage type 'S3'", "pip install enigma-storage-s3")


def test_unknown_backup_id(enigma: Enigma, tmp_path: Path) -> None:
    assert_clean_error(enigma("restore", "deadbeef", str(tmp_path / "out")), "no backup")
    assert_clean_error(enigma("verify", "deadbeef"), "no backup 'deadbeef'")
    assert_clean_error(enigma("backup", str(tmp_path / "does-not-exist")), "does not exist")


def test_unreadable_source_is_skipped_and_backup_is_partial(tmp_path: Path) -> None:
    """As root the backup runs without CAP_DAC_OVERRIDE, so chmod 000 bites as for anyone."""
    source = make_tree(tmp_path / "src")
    (source / "locked.txt").write_text("you cannot read me")
    (source / "locked.txt").chmod(0o000)
    (source / "locked-dir").mkdir()
    (source / "locked-dir" / "inside.txt").write_text("hidden")
    (source / "locked-dir").chmod(0o000)
    runner = Enigma(tmp_path / "config")
    runner.ok("init")
    result = runner("backup", str(source), unprivileged=True)
    assert result.code == 3, result
    assert "Traceback" not in result.err
    assert "locked.txt" in result.err and "locked-dir" in result.err
    backup_id = result.out.strip()
    (listed,) = json.loads(runner.ok("list", "--json").out)
    assert listed["status"] == "partial"
    log = json.loads(runner.ok("log", backup_id, "--json").out)
    events = {(e["event"], e["path"].rsplit("/", 1)[-1]) for e in log if e["path"]}
    assert ("unreadable", "locked.txt") in events and ("unreadable", "locked-dir") in events
    dest = tmp_path / "out"
    runner.ok("restore", backup_id, str(dest))
    got, want = snapshot(restored_root(dest, source)), snapshot(source)
    assert "locked.txt" not in got
    for path, entry in want.items():
        if not path.startswith("locked"):
            assert got[path] == entry, path


def test_restore_refuses_non_empty_destination(enigma: Enigma, tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src")
    backup_id = enigma.ok("backup", str(source)).out.strip()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep-me.txt").write_text("precious")
    assert_clean_error(enigma("restore", backup_id, str(dest)), "not empty", "--overwrite")
    assert sorted(os.listdir(dest)) == ["keep-me.txt"]
    enigma.ok("restore", backup_id, str(dest), "--overwrite")
    enigma.ok("restore", backup_id, str(dest), "--overwrite")  # again, over itself
    assert (dest / "keep-me.txt").read_text() == "precious"
    assert snapshot(restored_root(dest, source)) == snapshot(source)


@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_damaged_chunk_is_named_and_the_rest_restores(enigma: Enigma, tmp_path: Path,
                                                      damage: str) -> None:
    # pack_size = 0: the victim's chunk is an object of its own, damaged alone (a damaged
    # pack is covered in tests/test_packs.py).
    config = enigma.config_dir / "enigma.toml"
    config.write_text(config.read_text().replace("[enigma]\n", "[enigma]\npack_size = 0\n", 1))
    assert "pack_size = 0" in config.read_text()
    source = tmp_path / "src"
    source.mkdir()
    (source / "victim.bin").write_bytes(os.urandom(50_000))
    (source / "healthy.txt").write_text("fine\n")
    backup_id = enigma.ok("backup", str(source)).out.strip()
    victim_chunk = next(p for p in chunk_files(enigma.config_dir)
                        if p.stat().st_size > 50_000)
    if damage == "flip":
        blob = bytearray(victim_chunk.read_bytes())
        blob[len(blob) // 2] ^= 0x01
        victim_chunk.write_bytes(bytes(blob))
    else:
        victim_chunk.unlink()

    verify = enigma("verify", backup_id)
    assert verify.code == 1 and "Traceback" not in verify.err
    assert victim_chunk.name in verify.err
    assert "victim.bin" in verify.err and "healthy.txt" not in verify.err
    assert ("authentication failed" if damage == "flip" else "missing") in verify.err

    dest = tmp_path / "out"
    restore = enigma("restore", backup_id, str(dest))
    assert restore.code == 1 and "Traceback" not in restore.err
    assert "victim.bin" in restore.err
    root = restored_root(dest, source)
    assert (root / "healthy.txt").read_text() == "fine\n"
    assert not (root / "victim.bin").exists()
    assert [p.name for p in root.iterdir()] == ["healthy.txt"]  # no half-written file


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a real 'no space left on device' (needs root to mount)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_during_restore(enigma: Enigma, tmp_path: Path, tiny_disk: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "small.txt").write_text("fits\n")
    (source / "large.bin").write_bytes(os.urandom(4 << 20))
    backup_id = enigma.ok("backup", str(source)).out.strip()
    result = enigma("restore", backup_id, str(tiny_disk / "out"))
    assert_clean_error(result, "no space left on device")
    leftovers = [p.name for p in tiny_disk.rglob("*") if p.is_file()]
    assert not any(name.endswith(".enigma-restore") for name in leftovers), leftovers


def test_disk_full_during_backup_then_resume(tmp_path: Path, tiny_disk: Path) -> None:
    runner = Enigma(tmp_path / "config")
    runner.config_dir.mkdir()
    (runner.config_dir / "enigma.toml").write_text(
        f'[enigma]\n[[providers]]\nname = "tiny"\ntype = "Local"\npath = "{tiny_disk}/s"\n')
    runner.ok("init")
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.bin").write_bytes(os.urandom(1 << 20))
    (source / "b.bin").write_bytes(os.urandom(3 << 20))
    result = runner("backup", str(source))
    assert_clean_error(result, "no space left on device", "tiny")
    (failed,) = json.loads(runner.ok("list", "--json").out)
    assert failed["status"] == "failed"
    assert not [p for p in tiny_disk.rglob(".tmp-*")]  # no partial chunk object
    # Room again: a re-run completes without re-uploading what is stored; restore is exact.
    subprocess.run(["mount", "-o", "remount,size=16m", str(tiny_disk)], check=True)
    again = json.loads(runner.ok("backup", "--json", str(source)).out.splitlines()[-1])
    assert again["status"] == "complete"
    assert again["stats"]["chunks_new"] < again["stats"]["chunks"]
    dest = tmp_path / "out"
    runner.ok("restore", again["backup_id"], str(dest))
    assert snapshot(restored_root(dest, source)) == snapshot(source)
    runner.ok("gc")
    assert json.loads(runner.ok("list", "--json").out)[-1]["status"] == "complete"


def test_debug_shows_traceback(enigma: Enigma) -> None:
    result = enigma("--debug", "verify", "deadbeef")
    assert result.code == 1 and "Traceback" in result.err and "no backup" in result.err
