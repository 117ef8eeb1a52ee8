"""Tests for the SQLite manifest: schema, invariants, refcounts and the replication seam."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest
from helpers import manifest_at_schema

from enigma.errors import ConfigError, IntegrityError, NotFoundError
from enigma.manifest import (
    SCHEMA_VERSION,
    BackupRecord,
    BucketRecord,
    ChunkRecord,
    ChunkRef,
    FileEntry,
    LogEntry,
    Manifest,
    ObjectRecord,
)


def cid(n: int | str) -> bytes:
    return hashlib.sha256(str(n).encode()).digest()


def chunk(n: int | str, size: int = 100, providers: tuple[str, ...] = ("local",)) -> ChunkRecord:
    return ChunkRecord(
        id=cid(n),
        size=size,
        stored_size=size + 40,
        compression="none",
        key_id=1,
        providers=providers,
        created_at=1000.0,
    )


def fentry(path: str, *chunk_names: int | str, type: str = "file") -> FileEntry:
    refs = [ChunkRef(cid(c), i * 100, 100) for i, c in enumerate(chunk_names)]
    return FileEntry(path=path, type=type, size=100 * len(refs), chunks=refs)


def backup(bid: str, created_at: float = 1000.0) -> BackupRecord:
    return BackupRecord(id=bid, created_at=created_at, sources=["/src"], hostname="host")


def refcount(m: Manifest, n: int | str) -> int:
    rec = m.get_chunk(cid(n))
    assert rec is not None
    return rec.refcount


@pytest.fixture
def m(tmp_path: Path):
    with Manifest(tmp_path / "manifest.db") as manifest:
        yield manifest


# -- opening, pragmas, migrations ------------------------------------------------------


def test_wal_mode_and_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    Manifest(path).close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    with Manifest(path) as m:
        assert m._conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert m._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
        assert m._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_schema_version_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    with Manifest(path) as m:
        assert m.schema_version() == SCHEMA_VERSION >= 1
        m.add_chunks([chunk(1)])
    with Manifest(path) as m:
        assert m.schema_version() == SCHEMA_VERSION
        assert m.has_chunk(cid(1))
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    finally:
        conn.close()
    assert {
        "backups",
        "files",
        "file_chunks",
        "chunks",
        "chunk_locations",
        "backup_log",
        "buckets",
        "objects",
        "object_chunks",
    } <= tables
    # gc's lookups are indexed; chunks by provider are not looked up (schema 4 dropped it)
    assert {"chunks_unreferenced", "chunks_pack", "file_chunks_chunk"} <= indexes
    assert "chunk_locations_provider" not in indexes


def test_migrations_applied_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import enigma.manifest as mod

    path = tmp_path / "m.db"
    Manifest(path).close()
    applied: list[int] = []
    base = SCHEMA_VERSION

    def migration_next(conn: sqlite3.Connection) -> None:
        applied.append(base + 1)
        conn.execute("CREATE TABLE extra2 (x)")

    def migration_after(conn: sqlite3.Connection) -> None:
        applied.append(base + 2)
        conn.execute("INSERT INTO extra2 VALUES (42)")

    monkeypatch.setattr(mod, "MIGRATIONS", (*mod.MIGRATIONS, migration_next, migration_after))
    monkeypatch.setattr(mod, "SCHEMA_VERSION", base + 2)
    with Manifest(path) as m:
        assert applied == [base + 1, base + 2]
        assert m.schema_version() == base + 2
        assert m._conn.execute("SELECT x FROM extra2").fetchone()[0] == 42
    with Manifest(path) as m:  # already current: nothing re-runs
        assert applied == [base + 1, base + 2]


PACK_A, PACK_B = b"\xaa" * 32, b"\xbb" * 32


def pack_names(m: Manifest) -> list[bytes]:
    return [bytes(r[0]) for r in m._conn.execute("SELECT name FROM packs ORDER BY id")]


def test_packs_are_numbered_and_go_with_their_last_chunk(tmp_path: Path) -> None:
    """A chunk row holds its pack's number, not the pack's 32-byte id (schema 4); the
    records still name packs by id, and a pack's row goes once no chunk is in it."""
    from dataclasses import replace

    with Manifest(tmp_path / "m.db") as m:
        m.add_chunks([replace(chunk(1), pack=PACK_A), replace(chunk(2), pack=PACK_A, offset=140),
                      chunk(3)])
        assert [m.get_chunk(cid(n)).pack for n in (1, 2, 3)] == [PACK_A, PACK_A, None]
        assert m._conn.execute("SELECT pack FROM chunks WHERE id = ?",
                               (cid(2),)).fetchone()[0] == 1
        assert pack_names(m) == [PACK_A]
        assert m.pack_chunk_counts([PACK_A, PACK_B]) == {PACK_A: 2}
        m.move_chunks([(cid(1), PACK_A, PACK_B, 0)])
        assert [r.id for r in m.chunks_in_packs([PACK_B])] == [cid(1)]
        assert m.pack_chunk_counts([PACK_A, PACK_B]) == {PACK_A: 1, PACK_B: 1}
        m.move_chunks([(cid(2), PACK_A, PACK_B, 140)])
        assert pack_names(m) == [PACK_B]  # A emptied
        m.move_chunks([(cid(2), PACK_A, PACK_B, 999)])  # a replay: no longer in A
        assert m.get_chunk(cid(2)).offset == 140
        m.set_chunk_providers([(cid(1), ["local"])])  # repair took it out of its pack
        assert m.get_chunk(cid(1)).pack is None
        m.delete_chunks([cid(2)])
        assert pack_names(m) == [] and m.get_chunk(cid(3)).pack is None


def test_pack_numbers_are_the_same_on_every_replica(tmp_path: Path) -> None:
    """Raft replicas apply the same operations in processes of their own, each with its
    own hash seed: the numbers packs get must not follow a set's iteration order."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from enigma.manifest import ChunkRecord, Manifest\n"
        "packs = [bytes([n]) * 32 for n in range(1, 9)]\n"
        "with Manifest(sys.argv[1]) as m:\n"
        "    m.add_chunks([ChunkRecord(bytes([n]) * 32, 1, 41, 'none', 1, ('local',),\n"
        "                              pack=p) for n, p in enumerate(packs)])\n"
        "    m.move_chunks([(bytes([n]) * 32, p, p[::-1] + b'x', 0)\n"
        "                   for n, p in enumerate(packs)])\n"
        "    print(m._conn.execute('SELECT id, name FROM packs ORDER BY id').fetchall())\n"
    )
    numbering = {
        subprocess.run([sys.executable, "-c", script, str(tmp_path / f"{seed}.db")],
                       env={**os.environ, "PYTHONHASHSEED": str(seed)},
                       capture_output=True, text=True, check=True).stdout
        for seed in (1, 2, 3)
    }
    assert len(numbering) == 1, numbering


def test_schema_3_pack_ids_become_numbers(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with manifest_at_schema(path, 3) as old:  # chunk rows as Enigma 3 wrote them
        for n, pack in ((1, PACK_B), (2, PACK_A), (3, None), (4, PACK_B)):
            old._conn.execute("INSERT INTO chunks VALUES (?, 100, 140, 'none', 1, 0, 0,"
                              " ?, ?)", (cid(n), pack, n * 140))
            old._conn.execute("INSERT INTO chunk_locations VALUES (?, 'local')", (cid(n),))
    with Manifest(path) as m:
        assert m.schema_version() == SCHEMA_VERSION
        assert pack_names(m) == [PACK_A, PACK_B]
        assert [m.get_chunk(cid(n)).pack for n in (1, 2, 3, 4)] == [PACK_B, PACK_A, None, PACK_B]
        assert m.get_chunk(cid(4)).offset == 560 and m.get_chunk(cid(4)).providers == ("local",)
        assert m.pack_chunk_counts([PACK_A, PACK_B]) == {PACK_A: 1, PACK_B: 2}
        assert m._conn.execute("SELECT count(*) FROM chunks WHERE typeof(pack) = 'blob'"
                               ).fetchone()[0] == 0


def test_failed_migration_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import enigma.manifest as mod

    path = tmp_path / "m.db"
    Manifest(path).close()

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("boom")

    monkeypatch.setattr(mod, "MIGRATIONS", (*mod.MIGRATIONS, broken))
    monkeypatch.setattr(mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(RuntimeError):
        Manifest(path)
    monkeypatch.undo()
    with Manifest(path) as m:
        assert m.schema_version() == SCHEMA_VERSION
        assert (
            m._conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'half_done'").fetchone()
            is None
        )


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    Manifest(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.close()
    with pytest.raises(ConfigError) as info:
        Manifest(path)
    msg = str(info.value)
    assert str(path) in msg
    assert f"schema version {SCHEMA_VERSION + 5}" in msg
    assert f"({SCHEMA_VERSION})" in msg
    assert "upgrade enigma" in msg


@pytest.mark.parametrize("content", [b"hello, this is not a database\n" * 200, b"x" * 10])
def test_non_sqlite_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        Manifest(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == content  # untouched


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE something (x)")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match="not an enigma manifest"):
        Manifest(path)


def test_file_mode_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "m.db"
        with Manifest(path) as m:
            m.add_chunks([chunk(1)])
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            wal = Path(str(path) + "-wal")
            assert wal.exists()
            assert stat.S_IMODE(wal.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    m = Manifest(tmp_path / "m.db")
    m.close()
    m.close()
    with pytest.raises(ValueError):
        m.has_chunk(cid(1))


# -- chunks --------------------------------------------------------------------------


def test_add_chunks_dedups_and_merges_locations(m: Manifest) -> None:
    m.add_chunks([chunk(1, providers=("s3",)), chunk(2)])
    dup = chunk(1, size=999, providers=("azure", "s3"))
    dup.refcount = 7  # ignored
    m.add_chunks([dup])
    rec = m.get_chunk(cid(1))
    assert rec is not None
    assert rec.size == 100  # first write wins
    assert rec.refcount == 0
    assert rec.providers == ("azure", "s3")
    assert m.get_chunk(cid(99)) is None
    assert m.has_chunk(cid(2)) and not m.has_chunk(cid(3))
    assert m.chunk_totals() == (2, 200, 280)
    assert m.chunk_stats() == {"azure": (1, 140), "local": (1, 140), "s3": (1, 140)}


def test_known_chunks_batches(m: Manifest) -> None:
    m.add_chunks([chunk(i) for i in range(0, 1200, 2)])
    ids = [cid(i) for i in range(1200)]
    assert m.known_chunks(ids) == {cid(i) for i in range(0, 1200, 2)}
    assert m.known_chunks([]) == set()
    assert m.known_chunks(iter(ids[:3])) == {cid(0), cid(2)}


def test_get_chunks_batches_and_matches_get_chunk(m: Manifest) -> None:
    m.add_chunks([chunk(i, providers=("local", "s3") if i % 4 == 0 else ("local",))
                  for i in range(0, 1200, 2)])
    found = m.get_chunks(iter([cid(i) for i in range(1200)] + [cid(0)]))
    assert set(found) == {cid(i) for i in range(0, 1200, 2)}  # missing ids left out
    assert found[cid(0)].providers == ("local", "s3")
    assert all(found[cid(i)] == m.get_chunk(cid(i)) for i in (0, 2, 998, 1198))
    assert m.get_chunks([]) == {}


def test_iter_chunks_streams_all_in_id_order(m: Manifest) -> None:
    m.add_chunks([chunk(i, providers=("b", "a")) for i in range(50)])
    recs = list(m.iter_chunks())
    assert [r.id for r in recs] == sorted(cid(i) for i in range(50))
    assert all(r.providers == ("a", "b") for r in recs)


# -- backups and files ---------------------------------------------------------------


def test_refcounts_with_shared_chunks_and_delete_backup(m: Manifest) -> None:
    m.add_chunks([chunk(i) for i in range(1, 5)])
    m.begin_backup(backup("b1", 1))
    m.add_files("b1", [fentry("x", 1, 2, 1), fentry("y", 2), fentry("d", type="dir")])
    m.begin_backup(backup("b2", 2))
    m.add_files("b2", [fentry("x", 1, 3)])
    assert [refcount(m, i) for i in (1, 2, 3, 4)] == [3, 2, 1, 0]
    assert {c.id for c in m.unreferenced_chunks()} == {cid(4)}
    assert set(m.backup_chunk_ids("b1")) == {cid(1), cid(2)}
    assert len(list(m.backup_chunk_ids("b1"))) == 2  # distinct

    m.log("b1", [LogEntry(at=5.0, level="info", event="finished", message="ok")])
    m.delete_backup("b1")
    # its directory versions keep their references until gc drops them
    assert [refcount(m, i) for i in (1, 2, 3, 4)] == [3, 2, 1, 0]
    assert m.drop_unlinked_dirs() == 1
    assert m.drop_unlinked_dirs() == 0
    assert [refcount(m, i) for i in (1, 2, 3, 4)] == [1, 0, 1, 0]
    assert m.file_count("b1") == 0
    assert list(m.iter_files("b1")) == []
    assert m.backup_log("b1")[0].event == "finished"  # audit trail survives
    assert [b.id for b in m.list_backups()] == ["b2"]
    with pytest.raises(NotFoundError):
        m.delete_backup("b1")

    m.delete_backup("b2")
    assert {c.id for c in m.unreferenced_chunks(counting_unlinked=True)} == {
        cid(i) for i in (1, 2, 3, 4)}
    assert {c.id for c in m.unreferenced_chunks()} == {cid(2), cid(4)}
    m.drop_unlinked_dirs()
    assert [refcount(m, i) for i in (1, 2, 3, 4)] == [0, 0, 0, 0]
    assert m._conn.execute("SELECT count(*) FROM file_chunks").fetchone()[0] == 0


def test_missing_chunk_is_integrity_error_and_rolls_back(m: Manifest) -> None:
    m.add_chunks([chunk(1)])
    m.begin_backup(backup("b1"))
    batch = [fentry("a", 1), fentry("b", 1), fentry("c", 1, "missing")]
    with pytest.raises(IntegrityError, match=cid("missing").hex()):
        m.add_files("b1", batch)
    assert m.file_count("b1") == 0
    assert refcount(m, 1) == 0
    # the connection is usable and not stuck in a transaction
    m.add_files("b1", batch[:2])
    assert m.file_count("b1") == 2
    assert refcount(m, 1) == 2


def test_add_files_to_unknown_backup(m: Manifest) -> None:
    with pytest.raises(NotFoundError):
        m.add_files("nope", [fentry("a")])


def test_duplicate_path_rolls_back_batch(m: Manifest) -> None:
    m.add_chunks([chunk(1)])
    m.begin_backup(backup("b1"))
    m.add_files("b1", [fentry("a", 1)])
    with pytest.raises(IntegrityError):
        m.add_files("b1", [fentry("b", 1), fentry("a", 1)])
    assert m.file_count("b1") == 1
    assert refcount(m, 1) == 1


def test_backup_record_roundtrip_and_finish(m: Manifest) -> None:
    rec = BackupRecord(
        id="abc",
        created_at=12.5,
        sources=["/a", "/b"],
        hostname="h",
        params={"z": 1, "a": [1, 2]},
    )
    m.begin_backup(rec)
    assert m.get_backup("abc") == rec
    m.finish_backup("abc", 20.0, "complete", {"files": 3})
    got = m.get_backup("abc")
    assert (got.finished_at, got.status, got.stats) == (20.0, "complete", {"files": 3})
    raw = m._conn.execute("SELECT params FROM backups").fetchone()[0]
    assert raw == '{"a": [1, 2], "z": 1}'  # sort_keys
    with pytest.raises(NotFoundError):
        m.finish_backup("zzz", 1.0, "failed", {})


def test_get_backup_prefix_and_ambiguity(m: Manifest) -> None:
    ids = ["20240101-aaaa", "20240101-aabb", "20240102-cccc"]
    for i, bid in enumerate(ids):
        m.begin_backup(backup(bid, created_at=float(10 - i)))
    assert [b.id for b in m.list_backups()] == list(reversed(ids))  # by created_at
    assert m.get_backup("20240102").id == "20240102-cccc"
    assert m.get_backup("20240101-aab").id == "20240101-aabb"
    assert m.get_backup("20240101-aaaa").id == "20240101-aaaa"
    with pytest.raises(NotFoundError, match="ambiguous") as info:
        m.get_backup("20240101")
    assert "20240101-aaaa" in str(info.value) and "20240101-aabb" in str(info.value)
    with pytest.raises(NotFoundError) as info:
        m.get_backup("xyz")
    assert str(info.value) == "no backup 'xyz' (see: enigma list)"
    with pytest.raises(NotFoundError, match="no backup"):
        m.get_backup("202")  # too short to be a prefix


def test_ambiguous_prefix_lists_at_most_five(m: Manifest) -> None:
    for i in range(8):
        m.begin_backup(backup(f"same-{i}"))
    with pytest.raises(NotFoundError) as info:
        m.get_backup("same")
    assert sum(f"same-{i}" in str(info.value) for i in range(8)) == 5


def test_iter_files_order_chunks_and_prefix(m: Manifest) -> None:
    m.add_chunks([chunk(i) for i in range(10)])
    m.begin_backup(backup("b"))
    paths = ["a/bc", "a/b/c", "a/b", "z", "a/b/d/e", "a/b.txt", "a", "é", "a/b0"]
    m.add_files("b", [fentry(p, 3, 1, 2) if p == "a/b/c" else fentry(p) for p in paths[:5]])
    m.add_files("b", [fentry(p) for p in paths[5:]])
    got = list(m.iter_files("b"))
    # tree order: depth first, a directory right before its contents ("a/b.txt" after
    # "a/b"'s subtree although "." sorts before "/"); "a/b/d" is implied by "a/b/d/e"
    assert [f.path for f in got] == sorted(paths, key=lambda p: p.split("/"))
    assert [f.path for f in got][:5] == ["a", "a/b", "a/b/c", "a/b/d/e", "a/b.txt"]
    cfile = next(f for f in got if f.path == "a/b/c")
    assert [r.chunk_id for r in cfile.chunks] == [cid(3), cid(1), cid(2)]
    assert [r.offset for r in cfile.chunks] == [0, 100, 200]
    assert all(f.chunks == [] for f in got if f.path != "a/b/c")

    def under(prefix: str | None) -> list[str]:
        return [f.path for f in m.iter_files("b", prefix)]

    assert under("a/b") == ["a/b", "a/b/c", "a/b/d/e"]
    assert under("a/b/") == ["a/b", "a/b/c", "a/b/d/e"]
    assert under("a/b/c") == ["a/b/c"]
    assert under("a/bc") == ["a/bc"]
    assert under("nope") == []
    assert under("") == under(None) == under("/") == [f.path for f in got]
    assert m.file_count("b") == len(paths)


def test_iter_files_streams_while_writing(m: Manifest) -> None:
    m.add_chunks([chunk(1)])
    m.begin_backup(backup("b"))
    m.add_files("b", [fentry(f"f{i:03}", 1) for i in range(100)])
    it = m.iter_files("b")
    first = next(it)
    # a writer can commit while a reader is mid-stream; the reader keeps its snapshot
    m.begin_backup(backup("c"))
    m.add_files("c", [fentry("x", 1)])
    rest = list(it)
    assert first.path == "f000" and len(rest) == 99
    assert refcount(m, 1) == 101


def test_files_using_chunks(m: Manifest) -> None:
    m.add_chunks([chunk(i) for i in range(5)])
    m.begin_backup(backup("b"))
    m.add_files("b", [fentry("x", 1, 2), fentry("y", 2, 2), fentry("z", 3)])
    m.begin_backup(backup("c"))
    m.add_files("c", [fentry("other", 1)])
    assert m.files_using_chunks("b", [cid(1), cid(2), cid(4)]) == {
        cid(1): ["x"],
        cid(2): ["x", "y"],
    }


def test_log_entries_in_order(m: Manifest) -> None:
    entries = [
        LogEntry(at=1.0, level="warning", event="unreadable", path="a", message="EACCES"),
        LogEntry(at=2.0, level="info", event="finished"),
    ]
    m.log("b", entries)
    m.log("other", [LogEntry(at=3.0, level="error", event="x")])
    assert m.backup_log("b") == entries


def test_delete_chunks_only_removes_unreferenced(m: Manifest) -> None:
    m.add_chunks([chunk(i, providers=("a", "b")) for i in range(4)])
    m.begin_backup(backup("b"))
    m.add_files("b", [fentry("x", 0, 1)])
    unref = m.unreferenced_chunks()
    assert [c.id for c in unref] == sorted([cid(2), cid(3)])
    assert unref[0].providers == ("a", "b")
    m.delete_chunks([cid(i) for i in range(4)])
    assert [m.has_chunk(cid(i)) for i in range(4)] == [True, True, False, False]
    assert m._conn.execute("SELECT count(*) FROM chunk_locations").fetchone()[0] == 4
    # even with a drifted refcount, a chunk that a file points at is kept
    m._conn.execute("UPDATE chunks SET refcount = 0")
    m.delete_chunks([cid(0), cid(1)])
    assert m.has_chunk(cid(0)) and m.has_chunk(cid(1))


# -- gateway buckets and objects -------------------------------------------------------


def obj(key: str, *chunk_names: int | str, bucket: str = "bk") -> ObjectRecord:
    refs = [ChunkRef(cid(c), i * 100, 100) for i, c in enumerate(chunk_names)]
    return ObjectRecord(
        bucket=bucket,
        key=key,
        size=100 * len(refs),
        etag="e-" + key,
        created_at=5.0,
        content_type="text/plain",
        metadata={"k": "v"},
        chunks=refs,
    )


def test_buckets(m: Manifest) -> None:
    m.create_bucket(BucketRecord("zeta", "me", 1.0))
    m.create_bucket(BucketRecord("alpha", "me", 2.0, "eu-west-1"))
    assert [b.name for b in m.list_buckets()] == ["alpha", "zeta"]
    assert m.get_bucket("alpha") == BucketRecord("alpha", "me", 2.0, "eu-west-1")
    assert m.get_bucket("nope") is None
    with pytest.raises(IntegrityError, match="already exists"):
        m.create_bucket(BucketRecord("zeta", "you", 3.0))
    m.add_chunks([chunk(1)])
    m.put_object(obj("k", 1, bucket="zeta"))
    with pytest.raises(IntegrityError, match="not empty"):
        m.delete_bucket("zeta")
    m.delete_object("zeta", "k")
    m.delete_bucket("zeta")
    assert m.get_bucket("zeta") is None
    with pytest.raises(NotFoundError):
        m.delete_bucket("zeta")
    with pytest.raises(NotFoundError):
        m.put_object(obj("k", 1, bucket="zeta"))


def test_object_put_replace_delete_refcounts(m: Manifest) -> None:
    m.create_bucket(BucketRecord("bk", "me", 1.0))
    m.add_chunks([chunk(i) for i in range(1, 5)])
    m.put_object(obj("k", 1, 2, 1))
    assert [refcount(m, i) for i in (1, 2, 3, 4)] == [2, 1, 0, 0]
    got = m.get_object("bk", "k")
    assert got == obj("k", 1, 2, 1)

    m.put_object(obj("k", 2, 3))  # replace
    assert [refcount(m, i) for i in (1, 2, 3, 4)] == [0, 1, 1, 0]
    assert [r.chunk_id for r in m.get_object("bk", "k").chunks] == [cid(2), cid(3)]

    with pytest.raises(IntegrityError):
        m.put_object(obj("k", 4, "missing"))
    assert [r.chunk_id for r in m.get_object("bk", "k").chunks] == [cid(2), cid(3)]
    assert [refcount(m, i) for i in (1, 2, 3, 4)] == [0, 1, 1, 0]

    m.delete_object("bk", "k")
    m.delete_object("bk", "k")  # missing: no-op
    m.delete_object("bk", "never")
    assert [refcount(m, i) for i in (1, 2, 3, 4)] == [0, 0, 0, 0]
    assert m.get_object("bk", "k") is None
    assert m._conn.execute("SELECT count(*) FROM object_chunks").fetchone()[0] == 0


def test_list_objects_utf8_byte_order_prefix_and_paging(m: Manifest) -> None:
    m.create_bucket(BucketRecord("bk", "me", 1.0))
    # U+FF5E sorts before U+1F600 in code points and in UTF-8, but after it in UTF-16.
    keys = ["b", "a/1", "a/2", "Z", "é", "ä", "\uff5e", "\U0001f600", "a", "ab", "a\u00ff"]
    for k in keys:
        m.put_object(obj(k))
    expected = sorted(keys, key=lambda k: k.encode("utf-8"))
    listed = m.list_objects("bk")
    assert [o.key for o in listed] == expected
    assert all(o.chunks == [] for o in listed)
    assert listed[0].metadata == {"k": "v"}
    assert [o.key for o in m.list_objects("bk", prefix="a")] == ["a", "a/1", "a/2", "ab", "a\u00ff"]
    assert [o.key for o in m.list_objects("bk", prefix="a/")] == ["a/1", "a/2"]
    assert [o.key for o in m.list_objects("bk", prefix="\U0001f600")] == ["\U0001f600"]

    page, after = [], ""
    while True:
        batch = m.list_objects("bk", start_after=after, limit=3)
        if not batch:
            break
        page += [o.key for o in batch]
        after = batch[-1].key
    assert page == expected
    assert m.list_objects("other") == []


# -- the replication seam --------------------------------------------------------------


def test_apply_dispatches_only_mutations(m: Manifest) -> None:
    m.apply("add_chunks", [chunk(1)])
    m.apply("begin_backup", backup("b"))
    m.apply("add_files", "b", files=[fentry("x", 1)])
    assert refcount(m, 1) == 1
    for bad in ("get_chunk", "close", "_write", "apply", "__init__", "nonsense"):
        with pytest.raises(ValueError, match="unknown manifest operation"):
            m.apply(bad, cid(1))
    assert not m._closed
    for name in Manifest.MUTATING_OPERATIONS:
        assert callable(getattr(m, name))


def test_replaying_operations_gives_same_state(tmp_path: Path) -> None:
    ops = [
        ("add_chunks", ([chunk(1), chunk(2)],), {}),
        ("begin_backup", (backup("b"),), {}),
        ("add_files", ("b", [fentry("x", 1, 2), fentry("y", 2)]), {}),
        ("create_bucket", (BucketRecord("bk", "me", 1.0),), {}),
        ("put_object", (obj("k", 1),), {}),
        ("finish_backup", ("b", 9.0, "complete", {"n": 2}), {}),
    ]
    dumps = []
    for name in ("one.db", "two.db"):
        with Manifest(tmp_path / name) as m:
            for op, args, kwargs in ops:
                m.apply(op, *args, **kwargs)
            dumps.append(list(m._conn.iterdump()))
    assert dumps[0] == dumps[1]


def test_batch_commits_together_and_isolates_failures(m: Manifest) -> None:
    m.create_bucket(BucketRecord("bk", "me", 1.0))
    results = m.apply("apply_batch", [
        ("add_chunks", [[chunk(1), chunk(2)]]),
        ("put_object", [obj("a", 1)]),
        ("put_object", [obj("bad", 2, "missing")]),  # unknown chunk: undone alone
        ("put_object", [obj("nobucket", 1, bucket="gone")]),
        ("put_object", [obj("b", 1, 2)]),
    ])
    assert [type(r).__name__ if r else None for r in results] == [
        None, None, "IntegrityError", "NotFoundError", None]
    assert [o.key for o in m.list_objects("bk")] == ["a", "b"]
    assert [refcount(m, 1), refcount(m, 2)] == [2, 1]
    assert not m._batching and not m._conn.in_transaction
    # plain operations work normally after a batch
    m.delete_object("bk", "a")
    assert refcount(m, 1) == 1


def test_batch_is_one_transaction(m: Manifest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-manifest error rolls the whole batch back: nothing of it is visible."""
    m.create_bucket(BucketRecord("bk", "me", 1.0))
    m.add_chunks([chunk(1)])
    calls = []
    real = m.delete_object

    def failing(bucket: str, key: str) -> None:
        calls.append(key)
        real(bucket, key)
        raise OSError("disk on fire")

    monkeypatch.setattr(m, "delete_object", failing)
    with pytest.raises(OSError, match="disk on fire"):
        m.apply_batch([("put_object", [obj("x", 1)]), ("delete_object", ["bk", "y"])])
    assert calls == ["y"]
    assert m.get_object("bk", "x") is None and refcount(m, 1) == 0
    assert not m._batching and not m._conn.in_transaction


def test_batch_refuses_unknown_and_nested_operations(m: Manifest) -> None:
    for bad in ("apply_batch", "get_chunk", "close", "nonsense"):
        with pytest.raises(ValueError, match="in a batch"):
            m.apply_batch([("add_chunks", [[chunk(1)]]), (bad, [])])
    assert m.get_chunk(cid(1)) is None  # validated before anything ran


def test_batch_replays_to_the_same_state(tmp_path: Path) -> None:
    batch = [("create_bucket", [BucketRecord("bk", "me", 1.0)]),
             ("add_chunks", [[chunk(1)]]), ("put_object", [obj("k", 1)]),
             ("put_object", [obj("x", "missing")])]
    dumps = []
    for name in ("one.db", "two.db"):
        with Manifest(tmp_path / name) as db:
            db.apply("apply_batch", batch)
            dumps.append(list(db._conn.iterdump()))
    assert dumps[0] == dumps[1]


# -- scale and threads -----------------------------------------------------------------


def test_batch_of_20k_files_is_fast(m: Manifest) -> None:
    m.add_chunks([chunk(i) for i in range(1000)])
    m.begin_backup(backup("big"))
    files = [fentry(f"dir{i % 50}/file{i:06}", i % 1000, (i * 7) % 1000) for i in range(20_000)]
    start = time.perf_counter()
    m.add_files("big", files)
    elapsed = time.perf_counter() - start
    assert elapsed < 10, elapsed
    assert m.file_count("big") == 20_000
    assert sum(c.refcount for c in m.iter_chunks()) == 40_000
    assert sum(1 for _ in m.iter_files("big")) == 20_000
    m.delete_backup("big")
    m.drop_unlinked_dirs()
    assert sum(c.refcount for c in m.iter_chunks()) == 0


def test_concurrent_reads_from_threads(m: Manifest) -> None:
    m.add_chunks([chunk(i) for i in range(200)])
    m.begin_backup(backup("b"))
    m.add_files("b", [fentry(f"f{i:03}", i) for i in range(200)])
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def reader(n: int) -> None:
        try:
            start.wait()
            for _ in range(20):
                assert m.has_chunk(cid(n))
                assert m.get_chunk(cid(n)).refcount == 1
                assert len(m.known_chunks(cid(i) for i in range(200))) == 200
                assert m.file_count("b") == 200
                assert sum(1 for _ in m.iter_files("b", "f1")) == 0  # "f1" is not a dir
                assert len(list(m.iter_files("b"))) == 200
        except BaseException as exc:
            errors.append(exc)

    def writer() -> None:
        try:
            start.wait()
            for i in range(20):
                m.add_chunks([chunk(f"w{i}")])
                m.log("b", [LogEntry(at=float(i), level="info", event="tick")])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(7)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert len(m.backup_log("b")) == 20
