"""The Fixed chunker through the real ``enigma`` CLI: config, dedup, restore, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from helpers import Enigma, assert_clean_error, chunk_files, file_digest, restored_root

from enigma.manifest import Manifest
from enigma.testing import random_bytes

MiB = 1024 * 1024

CONFIG = """\
[enigma]
key_provider = "local"

[enigma.chunk_strategy.Fixed]
size = {size}
"""


def configured(tmp_path: Path, size: int | str = MiB) -> Enigma:
    runner = Enigma(tmp_path / "config")
    runner.config_dir.mkdir()
    (runner.config_dir / "enigma.toml").write_text(CONFIG.format(size=size))
    return runner


def test_aligned_duplicates_are_stored_once_and_restore_bit_exact(tmp_path: Path) -> None:
    """Two copies of 1 MiB-aligned content, plus a big file (streamed, not read whole)
    made of two repeated blocks: every repeated 1 MiB block is stored once. A copy shifted
    by one byte shares nothing, which is the fixed chunker's documented trade-off."""
    x, y, z = (random_bytes(MiB, seed=s) for s in (21, 22, 23))
    source = tmp_path / "src"
    (source / "copy").mkdir(parents=True)
    (source / "a.bin").write_bytes(x + y + z)
    shutil.copyfile(source / "a.bin", source / "copy" / "a.bin")
    with open(source / "big.bin", "wb") as out:  # 34 MiB: above the read-whole limit
        for _ in range(17):
            out.write(x + y)
    (source / "shifted.bin").write_bytes(b"!" + x + y)
    (source / "tail.bin").write_bytes(z[:1000])  # smaller than one chunk

    runner = configured(tmp_path)
    runner.ok("init")
    result = json.loads(runner.ok("backup", "--json", str(source)).out)
    stats = result["stats"]
    assert result["status"] == "complete"
    assert stats["files"] == 5
    assert stats["chunks"] == 3 + 3 + 34 + 3 + 1
    # x, y, z once each; shifted.bin's 3 chunks and tail.bin's 1 are new.
    assert stats["chunks_new"] == 3 + 3 + 1
    assert stats["bytes_new"] == 3 * MiB + (2 * MiB + 1) + 1000
    # Stored once each: the five 1 MiB chunks as objects of their own, the two small tails
    # (1 byte, 1000 bytes) in pack objects (tests/test_packs.py): one or two, as a pack
    # also ships whenever the pipeline runs idle, which the big file's reads may allow.
    with Manifest(runner.config_dir / "manifest.db") as manifest:
        rows = list(manifest.iter_chunks())
    assert sorted(r.size for r in rows if r.pack is None) == [MiB] * 5
    assert sorted(r.size for r in rows if r.pack is not None) == [1, 1000]
    assert len(chunk_files(runner.config_dir)) == 5
    packs = [p for p in (runner.config_dir / "storage" / "packs").rglob("*") if p.is_file()]
    assert {p.name for p in packs} == {r.pack.hex() for r in rows if r.pack is not None}

    backups = json.loads(runner.ok("list", "--json").out)
    assert backups[0]["params"]["chunker"] == "fixed"
    assert backups[0]["params"]["size"] == MiB

    again = json.loads(runner.ok("backup", "--json", "--force", str(source)).out)
    assert again["stats"]["chunks_new"] == 0

    dest = tmp_path / "out"
    runner.ok("restore", result["backup_id"], str(dest))
    restored = restored_root(dest, source)
    for rel in ("a.bin", "copy/a.bin", "big.bin", "shifted.bin", "tail.bin"):
        assert file_digest(restored / rel) == file_digest(source / rel), rel


def test_bad_size_is_one_line_naming_file_line_and_key(tmp_path: Path) -> None:
    runner = configured(tmp_path)
    runner.ok("init")
    (runner.config_dir / "enigma.toml").write_text(CONFIG.format(size=100))
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_text("x")
    result = runner("backup", str(source))
    assert_clean_error(result, f"{runner.config_dir / 'enigma.toml'}:4:",
                       "[enigma.chunk_strategy.Fixed]", "'size' = 100 is out of range")

    (runner.config_dir / "enigma.toml").write_text(
        CONFIG.format(size=MiB) + "avg_size = 4096\n")
    assert_clean_error(runner("backup", str(source)), ":6:", "'avg_size': unknown option "
                       "for fixed (accepted: size)")
