"""Restore writes under DEST and nowhere else, whatever the manifest says.

Each test backs up a small real tree through the CLI, then edits the manifest directly
with sqlite3 to add hostile entries (``..``, absolute paths, symlinks to outside
directories, files under files, empty components), and restores through the CLI. The
hostile entries must be refused and reported, nothing may appear outside DEST, the
legitimate files must still be restored, and the exit code must be non-zero without a
traceback.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import Enigma, Result, restored_root, snapshot

from enigma.manifest import FileEntry, entry_name, parent_path
from enigma.restore import UnsafePath, safe_parts

KEEP = "keep me\n"


@dataclass
class Repo:
    enigma: Enigma
    source: Path
    backup_id: str
    stored: str  # the source's path inside the backup
    outside: Path  # a directory that must stay untouched
    dest: Path  # three levels below tmp_path, so "../../" still lands inside tmp_path


@dataclass
class Hostile:
    path: str
    type: str = "file"
    target: str | None = None


@pytest.fixture
def repo(enigma: Enigma, tmp_path: Path) -> Repo:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "keep.txt").write_text(KEEP)
    (source / "sub" / "other.txt").write_text("other\n")
    backup_id = enigma.ok("backup", str(source)).out.strip()
    outside = tmp_path / "outside"
    outside.mkdir()
    return Repo(
        enigma,
        source,
        backup_id,
        str(source.resolve()).lstrip("/"),
        outside,
        tmp_path / "out" / "a" / "dest",
    )


def tamper(repo: Repo, *entries: Hostile) -> None:
    """Add ``entries`` to the backup, straight into the manifest's tables.

    File entries share keep.txt's chunk list: its chunks exist, so restore really writes
    the file if it does not refuse the entry, and an escaped file would be visible.
    """
    conn = sqlite3.connect(repo.enigma.config_dir / "manifest.db")
    try:
        with conn:
            (chunk_list,) = conn.execute(
                "SELECT f.chunk_list FROM files f JOIN dirs d ON d.id = f.dir_id"
                " JOIN backup_dirs bd ON bd.dir_id = f.dir_id"
                " WHERE bd.backup_id = ? AND d.path = ? AND f.name = 'keep.txt'",
                (repo.backup_id, repo.stored),
            ).fetchone()
            assert chunk_list is not None, "keep.txt should have at least one chunk"
            for entry in entries:
                conn.execute(
                    "INSERT INTO files (dir_id, name, type, size, mode, mtime_ns, target,"
                    " uid, gid, inode, ctime_ns, chunk_list)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0, 0, 0, ?)",
                    (
                        tampered_version(conn, repo.backup_id, entry.path),
                        entry_name(entry.path),
                        entry.type,
                        len(KEEP) if entry.type == "file" else 0,
                        0o755 if entry.type == "dir" else 0o644,
                        1_600_000_000_000_000_000,
                        entry.target,
                        chunk_list if entry.type == "file" else None,
                    ),
                )
    finally:
        conn.close()


def tampered_version(conn: sqlite3.Connection, backup_id: str, path: str) -> int:
    """The backup's directory version that holds ``path`` (made, and linked, if none does):
    the entry then reads back with exactly this path, however hostile."""
    parent = parent_path(path)
    row = conn.execute("SELECT d.id FROM dirs d JOIN backup_dirs bd ON bd.dir_id = d.id"
                       " WHERE bd.backup_id = ? AND d.path = ?", (backup_id, parent)).fetchone()
    if row is not None:
        return row[0]
    dir_id = conn.execute("INSERT INTO dirs (origin, path) VALUES ('tamper', ?)",
                          (parent,)).lastrowid
    conn.execute("INSERT INTO backup_dirs (backup_id, dir_id) VALUES (?, ?)", (backup_id, dir_id))
    return dir_id


def everything_under(root: Path, *skip: Path) -> set[str]:
    """Every path below ``root`` (not following symlinks), minus the subtrees in ``skip``."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        found.update(str(here / name) for name in dirnames + filenames)
    return found


def restore(repo: Repo, *extra: str) -> Result:
    """Restore and check what every hostile restore must show, whatever the case."""
    tmp = repo.outside.parent
    skip = (repo.dest, repo.enigma.config_dir)
    before = everything_under(tmp, *skip)
    result = repo.enigma("restore", repo.backup_id, str(repo.dest), *extra)
    assert result.code != 0, result
    assert "Traceback" not in result.err, result.err
    assert "refused" in result.err, result.err
    assert "internal error" not in result.err, result.err
    assert list(repo.outside.iterdir()) == [], "something was written outside DEST"
    # Nothing new anywhere in tmp_path outside DEST (DEST's own parents excepted).
    new = everything_under(tmp, *skip) - before
    assert new <= {str(p) for p in repo.dest.parents}, new
    # The legitimate files are still restored, bit for bit.
    assert snapshot(restored_root(repo.dest, repo.source)) == snapshot(repo.source)
    return result


def refused_lines(result: Result) -> list[str]:
    return [line for line in result.err.splitlines() if line.startswith("refused:")]


# --------------------------------------------------------------------------------------
# Unit level
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, parts",
    [
        ("a", ["a"]),
        ("home/me/docs/x.txt", ["home", "me", "docs", "x.txt"]),
        ("ünïcødé 文件/🚀 .txt", ["ünïcødé 文件", "🚀 .txt"]),
        ("a/..b/c..", ["a", "..b", "c.."]),
        ("...", ["..."]),
        (".hidden/.x", [".hidden", ".x"]),
    ],
)
def test_safe_parts_accepts_relative_paths(path: str, parts: list[str]) -> None:
    assert safe_parts(path) == parts


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/",
        "/etc/passwd",
        "//etc/passwd",
        "..",
        "../escape.txt",
        "../../escape.txt",
        "a/../../escape.txt",
        "a/b/..",
        "a/../b",
        ".",
        "./a",
        "a/./b",
        "a/.",
        "a//b",
        "a/",
        "/a/b",
        "a\0b",
        "a/b\0/../c",
    ],
)
def test_safe_parts_refuses_unsafe_paths(path: str) -> None:
    with pytest.raises(UnsafePath, match="refus"):
        safe_parts(path)


# --------------------------------------------------------------------------------------
# Through the CLI, with a tampered manifest
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hostile",
    [
        "../../escape.txt",
        "../escape.txt",
        "a/../../escape.txt",
        "a/../../../../outside/escape.txt",
        "..",
    ],
)
def test_dotdot_paths_are_refused(repo: Repo, hostile: str) -> None:
    tamper(repo, Hostile(hostile))
    result = restore(repo)
    assert len(refused_lines(result)) == 1, result.err
    assert hostile in refused_lines(result)[0]
    assert not (repo.dest.parent / "escape.txt").exists()
    assert not (repo.dest.parent.parent / "escape.txt").exists()
    assert not (repo.outside / "escape.txt").exists()


def test_dotdot_directory_and_symlink_entries_are_refused(repo: Repo) -> None:
    tamper(
        repo,
        Hostile("../../made-dir", type="dir"),
        Hostile("../../made-link", type="symlink", target=str(repo.outside)),
    )
    result = restore(repo)
    assert len(refused_lines(result)) == 2, result.err
    assert not os.path.lexists(repo.dest.parent.parent / "made-dir")
    assert not os.path.lexists(repo.dest.parent.parent / "made-link")


def test_absolute_paths_are_refused(repo: Repo) -> None:
    escape = repo.outside / "escape.txt"
    tamper(
        repo,
        Hostile(str(escape)),
        Hostile(str(repo.outside / "made-dir"), type="dir"),
        Hostile(str(repo.outside / "made-link"), type="symlink", target="/"),
        Hostile("/" + str(repo.outside / "double-slash.txt")),
    )
    result = restore(repo)
    assert len(refused_lines(result)) == 4, result.err
    assert not escape.exists()


@pytest.mark.parametrize(
    "hostile",
    [
        "a//escape.txt",
        "./escape.txt",
        "a/./escape.txt",
        "a/escape.txt/",
        "a/.",
    ],
)
def test_empty_and_dot_components_are_refused(repo: Repo, hostile: str) -> None:
    tamper(repo, Hostile(hostile))
    result = restore(repo)
    assert len(refused_lines(result)) == 1, result.err
    # Refused outright: not even normalised and written inside DEST.
    assert not (repo.dest / "escape.txt").exists()
    assert not (repo.dest / "a" / "escape.txt").exists()


@pytest.mark.parametrize("target", ["<outside>", "../../../outside", "/"])
def test_nothing_is_written_through_a_symlink_from_the_backup(repo: Repo, target: str) -> None:
    """evil -> <outside dir>, then evil/planted.txt: symlinks come last, so the file lands
    in a real directory DEST/evil and the symlink itself is refused."""
    target = target.replace("<outside>", str(repo.outside))
    tamper(
        repo,
        Hostile("evil", type="symlink", target=target),
        Hostile("evil/planted.txt"),
        Hostile("evil/deeper/planted.txt"),
        Hostile("evil/made-dir", type="dir"),
        Hostile("evil/link", type="symlink", target="/"),
    )
    result = restore(repo)
    assert len(refused_lines(result)) == 1, result.err
    assert "evil" in refused_lines(result)[0]
    assert (repo.dest / "evil").is_dir() and not (repo.dest / "evil").is_symlink()
    assert (repo.dest / "evil" / "planted.txt").read_bytes() == KEEP.encode()


def test_symlink_under_a_symlink_from_the_backup(repo: Repo) -> None:
    """A chain of symlinks in the backup: the inner one must not be created through the
    outer one (symlinks are restored in path order, so the outer exists by then)."""
    tamper(
        repo,
        Hostile("evil", type="symlink", target=str(repo.outside)),
        Hostile("evil/inner", type="symlink", target="/"),
    )
    result = restore(repo)
    assert len(refused_lines(result)) == 1, result.err
    assert os.readlink(repo.dest / "evil") == str(repo.outside)  # inside DEST: harmless


def test_existing_symlink_in_dest_is_not_followed_with_overwrite(repo: Repo) -> None:
    """DEST/evil already points outside; --overwrite must not write through it."""
    repo.dest.mkdir(parents=True)
    (repo.dest / "evil").symlink_to(repo.outside, target_is_directory=True)
    tamper(
        repo,
        Hostile("evil/planted.txt"),
        Hostile("evil/deeper/planted.txt"),
        Hostile("evil/made-dir", type="dir"),
        Hostile("evil/link", type="symlink", target="/"),
    )
    result = restore(repo, "--overwrite")
    assert len(refused_lines(result)) == 4, result.err
    assert os.readlink(repo.dest / "evil") == str(repo.outside)


def test_existing_symlink_in_dest_is_replaced_not_followed(repo: Repo) -> None:
    """A file, directory or symlink entry whose own name is a symlink in DEST replaces the
    link; the file outside that it pointed at keeps its content."""
    victim = repo.outside.parent / "victim.txt"
    victim.write_text("untouched\n")
    repo.dest.mkdir(parents=True)
    for name in ("as-file", "as-dir", "as-link"):
        (repo.dest / name).symlink_to(victim)
    tamper(
        repo,
        Hostile("as-file"),
        Hostile("as-dir", type="dir"),
        Hostile("as-link", type="symlink", target="elsewhere"),
        Hostile("../trigger.txt"),
    )  # one refusal, so the restore reports it
    restore(repo, "--overwrite")
    assert victim.read_text() == "untouched\n"
    assert (repo.dest / "as-file").read_text() == KEEP
    assert not (repo.dest / "as-file").is_symlink()
    assert (repo.dest / "as-dir").is_dir() and not (repo.dest / "as-dir").is_symlink()
    assert os.readlink(repo.dest / "as-link") == "elsewhere"


def test_stale_temp_name_in_dest_is_not_written_through(repo: Repo) -> None:
    """Restore writes each file to a temp name first; a symlink or a hard link already
    sitting at that name (left in DEST by someone else) must not carry the write outside."""
    victim_link = repo.outside.parent / "victim-link.txt"
    victim_hard = repo.outside.parent / "victim-hard.txt"
    victim_link.write_text("untouched\n")
    victim_hard.write_text("untouched\n")
    repo.dest.mkdir(parents=True)
    (repo.dest / ".one.txt.enigma-restore").symlink_to(victim_link)
    os.link(victim_hard, repo.dest / ".two.txt.enigma-restore")
    tamper(repo, Hostile("one.txt"), Hostile("two.txt"), Hostile("../trigger.txt"))
    restore(repo, "--overwrite")
    assert victim_link.read_text() == "untouched\n"
    assert victim_hard.read_text() == "untouched\n"
    assert (repo.dest / "one.txt").read_text() == KEEP
    assert (repo.dest / "two.txt").read_text() == KEEP


def test_file_under_a_file_entry_is_refused(repo: Repo) -> None:
    tamper(
        repo,
        Hostile("f"),
        Hostile("f/child.txt"),
        Hostile("f/child-dir", type="dir"),
        Hostile("f/child-link", type="symlink", target="/"),
    )
    result = restore(repo)
    assert len(refused_lines(result)) == 3, result.err
    assert (repo.dest / "f").read_text() == KEEP


def test_file_under_an_existing_file_in_dest_is_refused(repo: Repo) -> None:
    repo.dest.mkdir(parents=True)
    (repo.dest / "f").write_text("mine\n")
    tamper(repo, Hostile("f/child.txt"))
    result = restore(repo, "--overwrite")
    assert len(refused_lines(result)) == 1, result.err
    assert (repo.dest / "f").read_text() == "mine\n"


def test_all_hostile_entries_at_once(repo: Repo) -> None:
    """One restore meeting every kind of hostile entry still restores the real files."""
    tamper(
        repo,
        Hostile("../../escape.txt"),
        Hostile("a/../../escape.txt"),
        Hostile(str(repo.outside / "escape.txt")),
        Hostile("a//b"),
        Hostile("./c"),
        Hostile("evil", type="symlink", target=str(repo.outside)),
        Hostile("evil/planted.txt"),
        Hostile("f"),
        Hostile("f/child.txt"),
    )
    result = restore(repo)
    assert len(refused_lines(result)) == 7, result.err
    assert "7 refused" in result.err


# --------------------------------------------------------------------------------------
# Through the Manifest API, and through a recovered manifest snapshot
# --------------------------------------------------------------------------------------


def add_with_manifest_api(repo: Repo, *entries: Hostile) -> None:
    """Like ``tamper``, but through the Manifest's own named mutation (``add_files``): what
    a hostile snapshot made by a modified Enigma would hold, refcounts and all."""
    from enigma.manifest import Manifest

    manifest = Manifest(repo.enigma.config_dir / "manifest.db")
    try:
        (keep,) = [e for e in manifest.iter_files(repo.backup_id)
                   if e.path == f"{repo.stored}/keep.txt"]
        manifest.add_files(repo.backup_id, [
            FileEntry(e.path, e.type, len(KEEP) if e.type == "file" else 0,
                      0o755 if e.type == "dir" else 0o644, 1_600_000_000_000_000_000,
                      e.target, chunks=list(keep.chunks) if e.type == "file" else [])
            for e in entries])
    finally:
        manifest.close()


HOSTILE_SET = (
    Hostile("../../escape.txt"),
    Hostile("/tmp/enigma-absolute-escape.txt"),
    Hostile("evil", type="symlink", target="<outside>"),
    Hostile("evil/planted.txt"),
    Hostile("evil/inner", type="symlink", target="/"),
)


def hostile_set(repo: Repo) -> list[Hostile]:
    return [Hostile(h.path, h.type, (h.target or "").replace("<outside>", str(repo.outside))
                    or None) for h in HOSTILE_SET]


def test_manifest_api_entries_are_refused(repo: Repo) -> None:
    add_with_manifest_api(repo, *hostile_set(repo))
    result = restore(repo)
    assert len(refused_lines(result)) == 3, result.err  # ../, absolute, evil symlink
    assert not os.path.lexists("/tmp/enigma-absolute-escape.txt")
    assert (repo.dest / "evil" / "planted.txt").read_bytes() == KEEP.encode()


def test_recovered_snapshot_with_hostile_entries_is_refused(repo: Repo,
                                                            tmp_path: Path) -> None:
    """A snapshot is what a new machine trusts after ``enigma recover``: hostile rows
    sealed into one (by anyone holding the keys) are refused by the real restore there."""
    add_with_manifest_api(repo, *hostile_set(repo))
    other = tmp_path / "other-src"
    other.mkdir()
    (other / "x").write_text("x")
    repo.enigma.ok("backup", str(other))  # seals a snapshot of the tampered manifest
    storage = repo.enigma.config_dir / "storage"
    assert list((storage / "meta" / "manifest").iterdir()), "no snapshot was stored"
    fresh = Enigma(tmp_path / "new-machine")
    fresh.config_dir.mkdir()
    (fresh.config_dir / "enigma.toml").write_text(
        (repo.enigma.config_dir / "enigma.toml").read_text()
        + f'\n[[providers]]\nname = "local"\ntype = "Local"\npath = "{storage}"\n')
    fresh.ok("recover")
    moved = Repo(fresh, repo.source, repo.backup_id, repo.stored, repo.outside, repo.dest)
    result = restore(moved)
    assert len(refused_lines(result)) == 3, result.err
    assert not os.path.lexists("/tmp/enigma-absolute-escape.txt")
