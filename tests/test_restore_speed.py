"""What the fast restore path must still guarantee (behaviour only, no timings).

Restore writes small files in batches on worker threads, keeps directories open as
descriptors in a small LRU, and publishes each file by renaming a temp file. These tests
restore trees shaped to exercise exactly that (many files and directories, more
directories than the LRU holds, deep nesting, names that look like temp names, small and
large files with damaged chunks, a full disk) through the real ``enigma`` command, and
compare the result bit for bit, mode for mode and mtime for mtime with the source.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Enigma, assert_clean_error, restored_root, snapshot

from enigma.chunkstore import chunk_key
from enigma.manifest import Manifest
from enigma.packs import pack_key

#: Small CDC chunks, so a few hundred KB already make a multi-chunk file.
SMALL_CHUNKS = ('[enigma.chunk_strategy.Cdc]\nmin_size = 4096\navg_size = 16384\n'
                'max_size = 65536\n')


def small_file_tree(root: Path, *, files: int = 300, dirs: int = 12, seed: int = 7) -> Path:
    """Many small files of distinct content spread over nested directories, with assorted
    modes and mtimes on files and directories (a read-only directory among them)."""
    rng = random.Random(seed)
    folders = [root]
    for i in range(dirs):
        parent = rng.choice(folders)
        folder = parent / f"dir{i}"
        folder.mkdir(parents=True)
        folders.append(folder)
    for i in range(files):
        path = rng.choice(folders) / f"f{i:04d}.txt"
        path.write_bytes(f"file {i}\n".encode() + rng.randbytes(rng.randint(0, 6000)))
        path.chmod(rng.choice((0o644, 0o600, 0o755, 0o444)))
        os.utime(path, ns=(1_600_000_000_000_000_000 + i * 1_000_003,) * 2)
    (root / "empty.txt").write_bytes(b"")
    readonly = root / "readonly"
    readonly.mkdir()
    (readonly / "inside.txt").write_text("in a read-only directory\n")
    readonly.chmod(0o555)
    for i, folder in enumerate(folders[1:]):
        folder.chmod((0o755, 0o750, 0o700)[i % 3])
        os.utime(folder, ns=(1_500_000_000_000_000_000 + i * 7_000_001,) * 2)
    os.utime(readonly, ns=(1_400_000_000_000_000_000,) * 2)
    return root


def chunk_region(enigma: Enigma, backup_id: str, stored_path: str,
                 seq: int = 0) -> tuple[Path, int, int]:
    """Where chunk ``seq`` of the file at ``stored_path`` is stored: (storage file, start,
    length); its own object, or its bytes inside a pack."""
    conn = sqlite3.connect(enigma.config_dir / "manifest.db")
    try:
        file_of = (" FROM files f JOIN file_chunks fc ON fc.list_id = f.chunk_list"
                   " JOIN dirs d ON d.id = f.dir_id JOIN backup_dirs bd ON bd.dir_id = d.id"
                   " WHERE bd.backup_id = ? AND d.path = ? AND f.name = ?")
        parent, _, name = stored_path.rpartition("/")
        (chunk_id,) = conn.execute("SELECT fc.chunk_id" + file_of + " AND fc.seq = ?",
                                   (backup_id, parent, name, seq)).fetchone()
        (chunks,) = conn.execute("SELECT count(*)" + file_of,
                                 (backup_id, parent, name)).fetchone()
    finally:
        conn.close()
    assert chunks > seq
    with Manifest(enigma.config_dir / "manifest.db") as manifest:
        record = manifest.get_chunk(bytes(chunk_id))
    assert record is not None
    storage = enigma.config_dir / "storage"
    if record.pack is None:
        path = storage / chunk_key(record.id)
        assert path.stat().st_size == record.stored_size
        return path, 0, record.stored_size
    return storage / pack_key(record.pack), record.offset, record.stored_size


def flip_a_byte(region: tuple[Path, int, int]) -> None:
    """Flip the middle byte of a stored chunk: same size, only reading finds it."""
    path, start, length = region
    blob = bytearray(path.read_bytes())
    blob[start + length // 2] ^= 0x01
    path.write_bytes(bytes(blob))


def set_pack_size(enigma: Enigma, mib: int) -> None:
    config = enigma.config_dir / "enigma.toml"
    config.write_text(config.read_text().replace("[enigma]\n", f"[enigma]\npack_size = {mib}\n", 1))
    assert f"pack_size = {mib}" in config.read_text()


def stored(source: Path) -> str:
    return str(source.resolve()).lstrip("/")


def leftovers(dest: Path) -> list[str]:
    return [str(p) for p in dest.rglob("*") if p.name.endswith(".enigma-restore")]


def restore_json(enigma: Enigma, backup_id: str, dest: Path) -> tuple[int, dict]:
    result = enigma("restore", "--json", backup_id, str(dest))
    assert "Traceback" not in result.err, result.err
    return result.code, json.loads(result.out)


def test_many_small_files_restore_exactly_with_dir_modes_and_mtimes(enigma: Enigma,
                                                                     tmp_path: Path) -> None:
    source = small_file_tree(tmp_path / "src")
    backup_id = enigma.ok("backup", str(source)).out.strip()
    dest = tmp_path / "out"
    code, result = restore_json(enigma, backup_id, dest)
    assert code == 0 and result["ok"], result
    expected = snapshot(source)
    assert snapshot(restored_root(dest, source)) == expected
    assert result["files"] == sum(1 for v in expected.values() if v[0] == "file")
    assert result["bytes"] == sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    assert leftovers(dest) == []


@pytest.mark.parametrize("packed", [True, False], ids=["in-a-pack", "own-object"])
def test_one_damaged_chunk_among_many_small_files(enigma: Enigma, tmp_path: Path,
                                                  packed: bool) -> None:
    """Exactly the damaged file is reported and missing (not even a temp file); every
    other file, directory mode and mtime is restored exactly: whether the damaged chunk
    sits in a pack beside the other files' chunks (the default) or is an object of its
    own (``pack_size = 0``)."""
    if not packed:
        set_pack_size(enigma, 0)
    source = small_file_tree(tmp_path / "src")
    backup_id = enigma.ok("backup", str(source)).out.strip()
    victim = next(p for p in sorted(source.rglob("f*.txt")) if p.stat().st_size > 1000)
    rel = victim.relative_to(source).as_posix()
    region = chunk_region(enigma, backup_id, f"{stored(source)}/{rel}")
    assert (region[0].parent.parent.name == "packs") == packed
    flip_a_byte(region)

    dest = tmp_path / "out"
    code, result = restore_json(enigma, backup_id, dest)
    assert code == 1 and not result["ok"]
    assert len(result["damaged"]) == 1, result["damaged"]
    assert result["damaged"][0].startswith(f"{stored(source)}/{rel}: ")
    assert "authentication failed" in result["damaged"][0]
    assert result["refused"] == []
    expected = snapshot(source)
    del expected[rel]
    assert snapshot(restored_root(dest, source)) == expected
    assert result["files"] == sum(1 for v in expected.values() if v[0] == "file")
    assert leftovers(dest) == []


@pytest.mark.parametrize("size", [300_000, 3_000_000])
def test_damaged_chunk_in_a_multi_chunk_file(tmp_path: Path, size: int) -> None:
    """A multi-chunk file small enough for a batch (300 kB), or written chunk by chunk
    (3 MB): a damaged middle chunk drops that file alone, with no temp left."""
    enigma = Enigma(tmp_path / "config")
    enigma.config_dir.mkdir()
    # pack_size = 0: the damaged chunk is an object of its own (damage inside a pack:
    # test_one_damaged_chunk_among_many_small_files and tests/test_packs.py).
    (enigma.config_dir / "enigma.toml").write_text("[enigma]\npack_size = 0\n" + SMALL_CHUNKS)
    enigma.ok("init")
    source = small_file_tree(tmp_path / "src", files=60, dirs=3)
    rng = random.Random(size)
    (source / "dir0").chmod(0o755)
    (source / "dir0" / "victim.bin").write_bytes(rng.randbytes(size))
    (source / "dir0" / "zz-after.bin").write_bytes(rng.randbytes(size))
    backup_id = enigma.ok("backup", str(source)).out.strip()
    region = chunk_region(enigma, backup_id, f"{stored(source)}/dir0/victim.bin", seq=3)
    assert region[0].parent.parent.name == "chunks"
    flip_a_byte(region)

    dest = tmp_path / "out"
    code, result = restore_json(enigma, backup_id, dest)
    assert code == 1
    assert [line.split(":")[0] for line in result["damaged"]] == [
        f"{stored(source)}/dir0/victim.bin"]
    expected = snapshot(source)
    del expected["dir0/victim.bin"]
    assert snapshot(restored_root(dest, source)) == expected
    assert leftovers(dest) == []


def test_more_directories_than_stay_open_and_deep_nesting(enigma: Enigma,
                                                         tmp_path: Path) -> None:
    """More directories than the open-descriptor LRU holds, a directory whose files come
    before and after a large subtree (so it is evicted and opened again), and a chain
    of 150 nested directories."""
    source = tmp_path / "src"
    for i in range(150):
        folder = source / "a" / "b" / f"d{i:03d}"
        folder.mkdir(parents=True)
        (folder / "x.txt").write_text(f"x in {i}\n")
    (source / "a" / "b.txt").write_text("before the subtree\n")
    (source / "a" / "c.txt").write_text("after the subtree\n")
    deep = source.joinpath(*["n"] * 150)
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_text("deep down\n")
    backup_id = enigma.ok("backup", str(source)).out.strip()
    dest = tmp_path / "out"
    enigma.ok("restore", backup_id, str(dest))
    assert snapshot(restored_root(dest, source)) == snapshot(source)


def test_names_that_look_like_temp_files_are_ordinary_files(enigma: Enigma,
                                                           tmp_path: Path) -> None:
    """A backed-up file named like another file's temp name is restored too, and a stale
    temp file already in DEST is left alone (never opened, written or followed)."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "x").write_text("the file\n")
    (source / ".x.enigma-restore").write_text("a file that only looks like a temp file\n")
    backup_id = enigma.ok("backup", str(source)).out.strip()
    dest = tmp_path / "out"
    enigma.ok("restore", backup_id, str(dest))
    assert snapshot(restored_root(dest, source)) == snapshot(source)

    again = tmp_path / "again"
    root = restored_root(again, source)
    root.mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched\n")
    (root / ".stale.enigma-restore").symlink_to(victim)
    enigma.ok("restore", backup_id, str(again), "--overwrite")
    assert victim.read_text() == "untouched\n"
    assert os.readlink(root / ".stale.enigma-restore") == str(victim)
    assert (root / "x").read_text() == "the file\n"


def test_overwrite_replaces_files_and_links_but_not_directories(enigma: Enigma,
                                                               tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("file-over-file", "file-over-link", "file-over-dir"):
        (source / name).write_text(f"{name}\n")
    backup_id = enigma.ok("backup", str(source)).out.strip()
    dest = tmp_path / "out"
    root = restored_root(dest, source)
    root.mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched\n")
    (root / "file-over-file").write_text("old\n")
    (root / "file-over-link").symlink_to(victim)
    (root / "file-over-dir").mkdir()
    (root / "file-over-dir" / "mine.txt").write_text("mine\n")
    result = enigma("restore", "--json", "--overwrite", backup_id, str(dest))
    assert result.code == 1 and "Traceback" not in result.err
    outcome = json.loads(result.out)
    assert outcome["files"] == 2 and outcome["damaged"] == []
    assert len(outcome["refused"]) == 1 and "file-over-dir" in outcome["refused"][0]
    assert (root / "file-over-file").read_text() == "file-over-file\n"
    assert not (root / "file-over-link").is_symlink()
    assert (root / "file-over-link").read_text() == "file-over-link\n"
    assert victim.read_text() == "untouched\n"
    assert (root / "file-over-dir" / "mine.txt").read_text() == "mine\n"
    assert leftovers(dest) == []


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real 'no space left on device' (needs root to mount)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_while_writing_small_files(enigma: Enigma, tmp_path: Path,
                                             tiny_disk: Path) -> None:
    """Small files are written by worker threads: a full disk still ends the restore with
    one clean line, and no temp file is left behind."""
    source = tmp_path / "src"
    rng = random.Random(3)
    for i in range(400):
        folder = source / f"d{i % 8}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i}.bin").write_bytes(rng.randbytes(8000))
    backup_id = enigma.ok("backup", str(source)).out.strip()
    result = enigma("restore", backup_id, str(tiny_disk / "out"))
    assert_clean_error(result, "no space left on device")
    assert leftovers(tiny_disk) == []
