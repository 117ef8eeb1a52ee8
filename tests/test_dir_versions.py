"""Directory versions: backups share the manifest rows of directories that did not change.

Manifest level (link, delete, the schema 2 -> 3 migration) and through the CLI (a
no-change re-backup writes no file rows, a change writes only the changed directories,
restores of every backup stay exact after the older ones are forgotten).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pytest
from helpers import Enigma, make_tree, manifest_at_schema, restored_root, snapshot

import enigma.manifest as manifest_module
from enigma.errors import IntegrityError
from enigma.manifest import BackupRecord, ChunkRecord, ChunkRef, FileEntry, Manifest


def cid(n: int) -> bytes:
    return hashlib.sha256(str(n).encode()).digest()


def entry(path: str, *chunks: int, type: str = "file") -> FileEntry:
    refs = [ChunkRef(cid(c), i * 10, 10) for i, c in enumerate(chunks)]
    return FileEntry(path=path, type=type, size=10 * len(refs), chunks=refs)


def start(m: Manifest, backup_id: str) -> None:
    m.begin_backup(BackupRecord(id=backup_id, created_at=1.0, sources=["/s"], hostname="h"))


def refcounts(m: Manifest, *ns: int) -> list[int]:
    return [m.get_chunk(cid(n)).refcount for n in ns]  # type: ignore[union-attr]


def rows(m: Manifest, table: str) -> int:
    return m._conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def version_id(m: Manifest, backup_id: str, path: str) -> int:
    return m._conn.execute("SELECT id FROM dirs WHERE origin = ? AND path = ?",
                           (backup_id, path)).fetchone()[0]


@pytest.fixture
def m(tmp_path: Path):
    with Manifest(tmp_path / "manifest.db") as manifest:
        manifest.add_chunks([ChunkRecord(cid(i), 10, 50, "none", 1, ("local",))
                             for i in range(1, 6)])
        yield manifest


def test_linked_versions_are_shared_and_outlive_their_origin(m: Manifest) -> None:
    start(m, "b1")
    m.add_files("b1", [entry("s", type="dir"), entry("s/a", 1, 2), entry("s/d", type="dir")])
    m.add_files("b1", [entry("s/d/x", 2, 3)])
    assert refcounts(m, 1, 2, 3) == [1, 2, 1]
    start(m, "b2")
    # b2: "s" changed (a new file), "s/d" did not: linked, its references not counted again
    m.add_files("b2", [entry("s", type="dir"), entry("s/a", 1, 2), entry("s/d", type="dir"),
                       entry("s/new", 4)])
    m.link_dirs("b2", [version_id(m, "b1", "s/d")])
    assert refcounts(m, 1, 2, 3, 4) == [2, 3, 1, 1]
    assert [f.path for f in m.iter_files("b2")] == ["s", "s/a", "s/d", "s/d/x", "s/new"]
    assert [r.chunk_id for r in next(m.iter_files("b2", "s/d/x")).chunks] == [cid(2), cid(3)]
    assert m.file_count("b2") == 5
    assert set(m.backup_chunk_ids("b2")) == {cid(1), cid(2), cid(3), cid(4)}
    assert m.files_using_chunks("b2", [cid(3)]) == {cid(3): ["s/d/x"]}
    assert m.chunk_files([cid(3)]) == {cid(3): [("b1", "s/d/x"), ("b2", "s/d/x")]}
    assert [name for name, _ in m.list_dir("b2", "s")] == ["a", "d", "new"]
    assert [name for name, _ in m.list_dir("b2", "s/d")] == ["x"]

    m.delete_backup("b1")
    assert refcounts(m, 1, 2, 3, 4) == [2, 3, 1, 1]  # until gc drops b1's own versions
    assert m.drop_unlinked_dirs() == 2  # "" and "s"; "s/d" stays: b2 links it
    assert refcounts(m, 1, 2, 3, 4) == [1, 2, 1, 1]
    assert [f.path for f in m.iter_files("b2")] == ["s", "s/a", "s/d", "s/d/x", "s/new"]
    m.delete_backup("b2")
    assert m.drop_unlinked_dirs() == 3
    assert refcounts(m, 1, 2, 3, 4) == [0, 0, 0, 0]
    assert rows(m, "dirs") == rows(m, "files") == rows(m, "file_chunks") == 0


def list_of(m: Manifest, backup_id: str, path: str) -> int:
    parent, _, name = path.rpartition("/")
    return m._conn.execute(
        "SELECT f.chunk_list FROM files f JOIN backup_dirs bd ON bd.dir_id = f.dir_id"
        " JOIN dirs d ON d.id = f.dir_id WHERE bd.backup_id = ? AND d.path = ?"
        " AND f.name = ?", (backup_id, parent, name)).fetchone()[0]


def test_an_unchanged_file_in_a_changed_directory_shares_its_chunk_list(m: Manifest) -> None:
    """Its entry names the earlier row's chunk list instead of copying it; the list lives
    as long as any entry names it, and gc releases it (and only then its chunks) after."""
    start(m, "b1")
    m.add_files("b1", [entry("s", type="dir"), entry("s/a", 1, 2), entry("s/b", 3)])
    start(m, "b2")
    shared = list_of(m, "b1", "s/a")
    m.add_files("b2", [entry("s", type="dir"), entry("s/c", 4),
                       FileEntry(path="s/a", type="file", size=20, chunk_list=shared)])
    assert list_of(m, "b2", "s/a") == shared
    assert rows(m, "file_chunks") == 4  # a's list once, b's and c's
    assert refcounts(m, 1, 2, 3, 4) == [1, 1, 1, 1]
    assert [r.chunk_id for r in next(m.iter_files("b2", "s/a")).chunks] == [cid(1), cid(2)]
    assert m.chunk_files([cid(2)]) == {cid(2): [("b1", "s/a"), ("b2", "s/a")]}
    assert m.files_using_chunks("b2", [cid(1), cid(3)]) == {cid(1): ["s/a"]}
    with pytest.raises(IntegrityError, match="chunk list"):
        m.add_files("b2", [FileEntry(path="s/z", type="file", size=1, chunk_list=999)])
    assert m.file_count("b2") == 3

    m.delete_backup("b1")
    dry_run = {r.id for r in m.unreferenced_chunks(counting_unlinked=True)}
    assert dry_run == {cid(3), cid(5)}  # b's list goes; a's lives on in b2 (5: never used)
    assert m.drop_unlinked_dirs() == 2
    assert refcounts(m, 1, 2, 3, 4) == [1, 1, 0, 1]
    assert {r.id for r in m.unreferenced_chunks()} == dry_run
    assert [r.chunk_id for r in next(m.iter_files("b2", "s/a")).chunks] == [cid(1), cid(2)]
    m.delete_backup("b2")
    assert m.drop_unlinked_dirs() == 2
    assert refcounts(m, 1, 2, 3, 4) == [0, 0, 0, 0]
    assert rows(m, "file_chunks") == 0


def test_link_of_unknown_version_changes_nothing(m: Manifest) -> None:
    start(m, "b1")
    m.add_files("b1", [entry("a", 1)])
    start(m, "b2")
    with pytest.raises(IntegrityError, match="directory version"):
        m.link_dirs("b2", [version_id(m, "b1", ""), 999])
    assert m.file_count("b2") == 0
    m.link_dirs("b2", [version_id(m, "b1", "")] * 2)  # twice: once
    assert m.file_count("b2") == 1
    assert "link_dirs" in Manifest.MUTATING_OPERATIONS


def test_schema_2_manifest_migrates_with_its_backups(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with manifest_at_schema(path, 2) as old:
        conn = old._conn  # schema 2's tables, written as Enigma 2 did
        for i in range(1, 4):
            conn.execute("INSERT INTO chunks VALUES (?, 10, 50, 'none', 1, 0, 0, NULL, 0)",
                         (cid(i),))
            conn.execute("INSERT INTO chunk_locations VALUES (?, 'local')", (cid(i),))
        for backup_id in ("b1", "b2"):
            start(old, backup_id)
        for file_id, backup_id, path_, kind, chunks in (
                (1, "b1", "top", "dir", []), (2, "b1", "top/f", "file", [1, 2]),
                (3, "b1", "top/sub/g", "file", [3]), (4, "b2", "top/f", "file", [1])):
            conn.execute("INSERT INTO files VALUES (?, ?, ?, ?, 10, 420, 5, NULL, 0, 0,"
                         " 7, 6)", (file_id, backup_id, path_, kind))
            for seq, n in enumerate(chunks):
                conn.execute("INSERT INTO file_chunks VALUES (?, ?, ?, 0, 10)",
                             (file_id, seq, cid(n)))
                conn.execute("UPDATE chunks SET refcount = refcount + 1 WHERE id = ?",
                             (cid(n),))
    copy = tmp_path / "copy.db"
    copy.write_bytes(path.read_bytes())
    with Manifest(tmp_path / "installed.db") as installed:  # recover --force, Raft
        installed.restore_from(copy)
        assert installed.schema_version() == manifest_module.SCHEMA_VERSION
        assert [f.path for f in installed.iter_files("b1")] == ["top", "top/f", "top/sub/g"]
    with Manifest(path) as new:
        assert new.schema_version() == manifest_module.SCHEMA_VERSION
        indexes = {r[0] for r in new._conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "chunk_locations_provider" not in indexes  # migration 4
        assert {"chunks_pack", "file_chunks_chunk", "backup_dirs_dir"} <= indexes
        assert new.chunk_stats() == {"local": (3, 150)}
        assert [f.path for f in new.iter_files("b1")] == ["top", "top/f", "top/sub/g"]
        assert [[r.chunk_id for r in f.chunks] for f in new.iter_files("b1")] == [
            [], [cid(1), cid(2)], [cid(3)]]
        assert [(f.path, f.inode, f.ctime_ns) for f in new.iter_files("b2")] == [
            ("top/f", 7, 6)]
        assert refcounts(new, 1, 2, 3) == [2, 1, 1]
        new.delete_backup("b1")
        new.drop_unlinked_dirs()
        assert refcounts(new, 1, 2, 3) == [1, 0, 0]
        assert new._conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert {r[0] for r in new._conn.execute(
            "SELECT name FROM sqlite_master WHERE name LIKE '%_v2'")} == set()


# -- through the CLI -------------------------------------------------------------------


def backup(enigma: Enigma, *args: str) -> dict:
    return json.loads(enigma.ok("backup", "--json", *args).out.splitlines()[-1])


def manifest_rows(enigma: Enigma, table: str) -> int:
    with sqlite3.connect(enigma.config_dir / "manifest.db") as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_rebackup_writes_rows_only_for_changed_directories(enigma: Enigma,
                                                           tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src")
    (source / "deep" / "er").mkdir(parents=True)
    (source / "deep" / "er" / "leaf.txt").write_text("leaf")
    original = snapshot(source)
    first = backup(enigma, str(source))
    files_after_first = manifest_rows(enigma, "files")

    second = backup(enigma, str(source))
    assert second["stats"]["files_unchanged"] == second["stats"]["files"]
    assert second["stats"]["dirs"] == first["stats"]["dirs"]
    # only the source's own entry is written again (it sits in its parent's listing,
    # which the backup does not read); every directory below is linked
    assert manifest_rows(enigma, "files") == files_after_first + 1

    (source / "deep" / "er" / "leaf.txt").write_text("changed leaf")
    third = backup(enigma, str(source))
    assert third["stats"]["files_changed"] == 1
    # "deep/er" is new (its file changed); "deep" is not (er's mtime did not change);
    # the top is new only for the source's own entry
    assert manifest_rows(enigma, "files") == files_after_first + 1 + 1 + 1

    enigma.ok("forget", first["backup_id"], second["backup_id"])
    enigma.ok("gc")
    dest = tmp_path / "out"
    enigma.ok("restore", third["backup_id"], str(dest))
    expected = dict(original)
    expected["deep/er/leaf.txt"] = snapshot(source)["deep/er/leaf.txt"]
    assert snapshot(restored_root(dest, source)) == expected == snapshot(source)
    assert enigma.ok("verify", third["backup_id"]).code == 0


def test_unchanged_files_in_a_changed_directory_share_their_chunk_lists(
        enigma: Enigma, tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src")
    first = backup(enigma, str(source))
    lists = manifest_rows(enigma, "file_chunks")
    (source / "docs" / "added.txt").write_text("added")  # docs and the top change
    second = backup(enigma, str(source))
    assert second["stats"]["files_new"] == 1
    assert second["stats"]["files_unchanged"] == second["stats"]["files"] - 1
    assert manifest_rows(enigma, "file_chunks") == lists + 1  # the new file's one chunk
    enigma.ok("forget", first["backup_id"])
    enigma.ok("gc")
    dest = tmp_path / "out"
    enigma.ok("restore", second["backup_id"], str(dest))
    assert snapshot(restored_root(dest, source)) == snapshot(source)
    assert enigma.ok("verify", second["backup_id"]).code == 0


def test_a_new_file_name_or_mode_change_is_not_linked(enigma: Enigma, tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src")
    backup(enigma, str(source))
    os.chmod(source / "docs", 0o700)  # the directory's own mode: its parent changes
    (source / "docs" / "added.txt").write_text("added")
    result = backup(enigma, str(source))
    assert result["stats"]["files_new"] == 1
    dest = tmp_path / "out"
    enigma.ok("restore", result["backup_id"], str(dest))
    restored = restored_root(dest, source)
    assert snapshot(restored) == snapshot(source)
    assert (restored / "docs").stat().st_mode & 0o777 == 0o700


def test_nested_and_repeated_sources_are_backed_up_once(enigma: Enigma,
                                                        tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src")
    result = backup(enigma, str(source), str(source / "docs"), str(source))
    assert result["stats"]["files"] == backup(enigma, str(source))["stats"]["files"]
    dest = tmp_path / "out"
    enigma.ok("restore", result["backup_id"], str(dest))
    assert snapshot(restored_root(dest, source)) == snapshot(source)


def test_forgotten_backups_versions_stay_linkable_until_gc(m: Manifest) -> None:
    """A backup that loaded its file cache before a concurrent ``forget`` of its parent
    still links the parent's versions: only gc (repository locked) drops them."""
    start(m, "b1")
    m.add_files("b1", [entry("a", 1)])
    start(m, "b2")
    m.delete_backup("b1")
    m.link_dirs("b2", [version_id(m, "b1", "")])
    assert m.drop_unlinked_dirs() == 0
    assert [f.path for f in m.iter_files("b2")] == ["a"]
    assert refcounts(m, 1) == [1]


def test_gc_dry_run_counts_what_forget_released(enigma: Enigma, tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src")
    first = backup(enigma, str(source))
    (source / "docs" / "readme.txt").write_text("rewritten: the old chunk is garbage\n")
    backup(enigma, str(source))
    enigma.ok("forget", first["backup_id"])
    planned = json.loads(enigma.ok("gc", "--dry-run", "--json").out)
    done = json.loads(enigma.ok("gc", "--json").out)
    assert planned["chunks"] == done["chunks"] >= 1
    assert manifest_rows(enigma, "dirs WHERE id NOT IN (SELECT dir_id FROM backup_dirs)") == 0
    assert json.loads(enigma.ok("gc", "--json").out)["chunks"] == 0
