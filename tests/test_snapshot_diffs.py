"""Incremental manifest snapshots: most are page diffs against the last full snapshot.

A diff must turn its base into the manifest copy byte for byte, be written only when its
base is on every provider, give way to a full snapshot when it would hold most pages, and
keep its base alive through rotation. Recovery from diffs is in tests/test_recover.py.
"""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest
from helpers import Enigma, make_tree, many_files, open_repo

from enigma import recovery
from enigma.errors import IntegrityError
from enigma.manifest import Manifest
from enigma.pagediff import BaseDigests, apply_diff, changed_pages, page_digests, write_diff
from enigma.recover import fetch_manifest_copy


def snapshot_dir(config_dir: Path) -> Path:
    return config_dir / "storage" / recovery.SNAPSHOT_PREFIX


def snapshot_names(config_dir: Path) -> list[str]:
    folder = snapshot_dir(config_dir)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def new_names(config_dir: Path, before: list[str]) -> list[str]:
    return [n for n in snapshot_names(config_dir) if n not in before]


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    config_dir = tmp_path / "config"
    Enigma(config_dir).ok("init")
    return config_dir


# --------------------------------------------------------------------------- page diffs


def test_a_diff_turns_its_base_into_the_newer_copy_byte_for_byte(tmp_path: Path) -> None:
    live = sqlite3.connect(tmp_path / "live.db")
    live.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, data BLOB)")
    live.executemany("INSERT INTO t VALUES (?, randomblob(32))", [(i,) for i in range(5000)])
    live.commit()
    base, newer = tmp_path / "base.db", tmp_path / "newer.db"
    live.backup(sqlite3.connect(base))
    live.executemany("INSERT INTO t VALUES (?, randomblob(32))",
                     [(i,) for i in range(5000, 5300)])
    live.execute("UPDATE t SET data = x'00' WHERE n = 7")
    live.commit()
    live.backup(sqlite3.connect(newer))

    size, base_digests = page_digests(base)
    _, newer_digests = page_digests(newer)
    changed = changed_pages(base_digests, newer_digests)
    assert 0 < len(changed) < len(newer_digests)
    diff = tmp_path / "diff"
    with open(diff, "wb") as out:
        write_diff(newer, size, len(newer_digests), changed, out)
    assert diff.stat().st_size < newer.stat().st_size
    apply_diff(diff, base)
    assert base.read_bytes() == newer.read_bytes()


def test_a_diff_that_does_not_fit_its_base_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    wide = sqlite3.connect(other)
    wide.execute("PRAGMA page_size = 8192")
    wide.execute("CREATE TABLE t (x)")
    wide.commit()
    base = tmp_path / "base.db"
    sqlite3.connect(base).execute("CREATE TABLE t (x)")
    size, digests = page_digests(other)
    assert size == 8192
    diff = tmp_path / "diff"
    with open(diff, "wb") as out:
        write_diff(other, size, len(digests), [0], out)
    with pytest.raises(IntegrityError, match="page size"):
        apply_diff(diff, base)
    diff.write_bytes(diff.read_bytes()[:-100])
    with pytest.raises(IntegrityError):
        apply_diff(diff, base)


def test_copies_of_an_unchanged_manifest_are_identical(tmp_path: Path) -> None:
    with Manifest(tmp_path / "manifest.db") as manifest:
        manifest.copy_pages_to(tmp_path / "a.db")
        manifest.copy_pages_to(tmp_path / "b.db")
    assert (tmp_path / "a.db").read_bytes() == (tmp_path / "b.db").read_bytes()


def test_base_digests_survive_a_round_trip_and_ignore_a_damaged_file(tmp_path: Path) -> None:
    database = tmp_path / "manifest.db"
    BaseDigests("20240101T000000Z-0123abcd", 4096, [b"a" * 16, b"b" * 16]).save(database)
    path = BaseDigests.path_for(database)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = BaseDigests.load(database)
    assert loaded == BaseDigests("20240101T000000Z-0123abcd", 4096, [b"a" * 16, b"b" * 16])
    path.write_bytes(path.read_bytes()[:-1])
    assert BaseDigests.load(database) is None


# --------------------------------------------------------------------------- what is stored


def test_a_small_backup_stores_a_diff_that_rebuilds_the_manifest(repo_dir: Path,
                                                                tmp_path: Path) -> None:
    cli = Enigma(repo_dir)
    source = many_files(make_tree(tmp_path / "src"))
    before = snapshot_names(repo_dir)
    cli.ok("backup", str(source))
    (full,) = new_names(repo_dir, before)
    assert recovery.snapshot_base(full) == ""
    assert stat.S_IMODE(BaseDigests.path_for(repo_dir / "manifest.db").stat().st_mode) == 0o600

    (source / "one more.txt").write_text("a small change\n")
    before = snapshot_names(repo_dir)
    cli.ok("backup", str(source))
    (diff,) = new_names(repo_dir, before)
    assert recovery.snapshot_base(diff) == full
    folder = snapshot_dir(repo_dir)
    assert (folder / diff).stat().st_size < (folder / full).stat().st_size / 4

    with open_repo(repo_dir) as repo:
        key = recovery.snapshot_key(repo.keys)
        providers = repo.providers
        rebuilt, live = tmp_path / "rebuilt.db", tmp_path / "live.db"
        holders = {name: ["local"] for name in (full, diff)}
        fetch_manifest_copy(providers, holders, "local", diff, key, rebuilt, tmp_path)
        repo.manifest.copy_pages_to(live)
    assert rebuilt.read_bytes() == live.read_bytes()


def test_a_base_missing_on_a_provider_means_a_full_snapshot(repo_dir: Path,
                                                           tmp_path: Path) -> None:
    cli = Enigma(repo_dir)
    source = make_tree(tmp_path / "src")
    before = snapshot_names(repo_dir)
    cli.ok("backup", str(source))
    (full,) = new_names(repo_dir, before)
    (snapshot_dir(repo_dir) / full).unlink()
    (source / "one more.txt").write_text("a small change\n")
    before = snapshot_names(repo_dir)
    cli.ok("backup", str(source))
    (stored,) = new_names(repo_dir, before)
    assert recovery.snapshot_base(stored) == ""
    assert BaseDigests.load(repo_dir / "manifest.db").name == stored


def test_a_diff_of_most_pages_is_stored_full(repo_dir: Path, tmp_path: Path) -> None:
    cli = Enigma(repo_dir)
    small = tmp_path / "small"
    small.mkdir()
    (small / "a.txt").write_text("one file\n")
    cli.ok("backup", str(small))
    before = snapshot_names(repo_dir)
    cli.ok("backup", str(many_files(tmp_path / "many")))
    (stored,) = new_names(repo_dir, before)
    assert recovery.snapshot_base(stored) == ""


def test_rotation_keeps_the_base_of_every_kept_diff(repo_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recovery, "KEEP_SNAPSHOTS", 2)
    seconds = iter(range(1_700_000_000, 1_700_000_100))  # one second apart: a fixed order
    named = recovery.new_snapshot_name
    monkeypatch.setattr(recovery, "new_snapshot_name",
                        lambda now_ns, base="": named(next(seconds) * 10**9, base))
    with open_repo(repo_dir) as repo:
        first = recovery.store_snapshot(repo)
        later = [recovery.store_snapshot(repo) for _ in range(4)]
    assert recovery.snapshot_base(first.name) == ""
    assert all(recovery.snapshot_base(result.name) == first.name for result in later)
    assert snapshot_names(repo_dir) == sorted([first.name, later[-2].name, later[-1].name])
    assert sum(result.deleted for result in later) == 2
