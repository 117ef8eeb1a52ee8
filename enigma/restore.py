"""``enigma restore``: rebuild files, directories and symlinks under DEST, and nowhere else.

Whatever the manifest says, an entry is written only at a path that is relative, has no
``..`` and reaches DEST without passing through a symlink. Files are written to a temp
name and renamed, so a file whose chunks are damaged is reported and never left
half-written; the rest of the backup is still restored.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from enigma.chunkstore import ChunkStore
from enigma.errors import EnigmaError, IntegrityError, NotFoundError
from enigma.manifest import ChunkRef, FileEntry
from enigma.pipeline import ordered_map
from enigma.repository import Repository


class UnsafePath(EnigmaError):
    """A manifest entry that would land outside DEST."""


@dataclass
class RestoreResult:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    damaged: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.refused


def select(entries: Iterator[FileEntry], glob: str | None) -> Iterator[FileEntry]:
    """Keep entries whose path (or, for a pattern without '/', whose name) matches ``glob``."""
    if not glob:
        yield from entries
        return
    by_name = "/" not in glob
    for entry in entries:
        name = entry.path.rsplit("/", 1)[-1]
        if fnmatch.fnmatchcase(entry.path, glob) or (by_name and fnmatch.fnmatchcase(name, glob)):
            yield entry


def safe_parts(path: str) -> list[str]:
    """Split a stored path, refusing absolute paths, '..', '.', empty and NUL components.

    A backslash is an ordinary character in a POSIX file name, so it is allowed.
    """
    if not path or path.startswith("/") or "\0" in path:
        raise UnsafePath(f"refusing unsafe path {path!r}")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafePath(f"refusing unsafe path {path!r}")
    return parts


def is_nonempty_dir(path: Path) -> bool:
    try:
        with os.scandir(path) as it:
            return any(True for _ in it)
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        raise EnigmaError(f"destination {path} exists and is not a directory") from None


@dataclass
class _OpenFile:
    """A file being restored: chunks go to ``tmp``, which is renamed to ``path`` when whole."""

    entry: FileEntry
    path: Path
    tmp: Path
    out: BinaryIO
    damaged: str = ""

    def abandon(self) -> None:
        with contextlib.suppress(OSError):
            self.out.close()
        with_suppressed_unlink(self.tmp)


class _Restorer:
    def __init__(self, repo: Repository, dest: Path, overwrite: bool) -> None:
        self.repo = repo
        self.dest = dest
        self.overwrite = overwrite
        self.store = ChunkStore(repo)
        self.result = RestoreResult()
        self.dirs: list[FileEntry] = []

    def target(self, entry: FileEntry) -> Path:
        """DEST/entry.path, creating parents; refuse if any parent is not a real directory."""
        parts = safe_parts(entry.path)
        current = self.dest
        for part in parts[:-1]:
            current = current / part
            try:
                st = os.lstat(current)
            except FileNotFoundError:
                os.mkdir(current, 0o700)
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafePath(f"refusing {entry.path!r}: {current} is not a directory "
                                 "(a symlink or file is in the way)")
        return current / parts[-1]

    def clear(self, path: Path, keep_dir: bool = False) -> None:
        """Make room for an entry: an existing symlink or file is replaced, never followed."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            raise UnsafePath(f"refusing to replace directory {path} with a non-directory")
        if not self.overwrite:
            raise EnigmaError(f"{path} exists; use --overwrite to replace it")
        os.unlink(path)

    def directory(self, entry: FileEntry) -> None:
        path = self.target(entry)
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                self.clear(path)
                os.mkdir(path, 0o700)
        except FileNotFoundError:
            os.mkdir(path, 0o700)
        self.dirs.append(entry)
        self.result.dirs += 1

    def begin_file(self, entry: FileEntry) -> _OpenFile:
        """Open a temp file beside the target; chunks are written to it as they arrive."""
        path = self.target(entry)
        self.clear(path, keep_dir=False)
        tmp = path.with_name(f".{path.name}.enigma-restore")
        # A stale temp, or a symlink / hard link planted at its name, is removed, never
        # opened: O_TRUNC on a hard link would overwrite the file it shares outside DEST.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        return _OpenFile(entry, path, tmp, os.fdopen(fd, "wb"))

    def end_file(self, handle: _OpenFile) -> None:
        """Give a complete file its mode and mtime and its name; drop a damaged one."""
        handle.out.close()
        entry = handle.entry
        if handle.damaged:
            os.unlink(handle.tmp)
            self.result.damaged.append(f"{entry.path}: {handle.damaged}")
            return
        os.chmod(handle.tmp, entry.mode)
        os.utime(handle.tmp, ns=(entry.mtime_ns, entry.mtime_ns))
        os.replace(handle.tmp, handle.path)
        self.result.files += 1
        self.result.bytes += entry.size

    def symlink(self, entry: FileEntry) -> None:
        path = self.target(entry)
        self.clear(path)
        os.symlink(entry.target or "", path)
        os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
        self.result.symlinks += 1

    def finish_dirs(self) -> None:
        """Modes and mtimes of directories last (deepest first): writing inside changes them."""
        for entry in sorted(self.dirs, key=lambda e: e.path.count("/"), reverse=True):
            path = self.dest.joinpath(*safe_parts(entry.path))
            os.chmod(path, entry.mode)
            os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns))


def with_suppressed_unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def list_entries(repo: Repository, backup_id: str, prefix: str | None,
                 glob: str | None) -> Iterator[FileEntry]:
    backup = repo.manifest.get_backup(backup_id)
    return select(repo.manifest.iter_files(backup.id, prefix.strip("/") if prefix else None),
                  glob)


def run_restore(repo: Repository, backup_id: str, dest: str | os.PathLike[str], *,
                prefix: str | None = None, glob: str | None = None,
                overwrite: bool = False) -> RestoreResult:
    """Restore a backup (or the part selected by ``prefix``/``glob``) into ``dest``.

    Chunks are fetched, authenticated and decompressed in parallel, read ahead within a
    byte budget, and written in order, one file at a time.
    """
    backup = repo.manifest.get_backup(backup_id)
    target = Path(os.path.abspath(dest))
    if is_nonempty_dir(target) and not overwrite:
        raise EnigmaError(f"destination {target} is not empty; use --overwrite to restore "
                          "into it anyway")
    target.mkdir(parents=True, exist_ok=True)
    restorer = _Restorer(repo, target, overwrite)
    manifest, store = repo.manifest, restorer.store
    symlinks: list[FileEntry] = []
    matched = 0

    def tasks() -> Iterator[tuple[str, FileEntry, ChunkRef | None]]:
        for entry in list_entries(repo, backup.id, prefix, glob):
            yield "entry", entry, None
            if entry.type == "file" and _is_safe(entry.path):
                for ref in entry.chunks:
                    yield "chunk", entry, ref
                yield "end", entry, None

    def fetch(task: tuple[str, FileEntry, ChunkRef | None]) -> bytes | None:
        ref = task[2]
        if ref is None:
            return None
        record = manifest.get_chunk(ref.chunk_id)
        if record is None:
            raise IntegrityError(f"chunk {ref.chunk_id.hex()[:12]} is not in the manifest")
        return store.get(record)

    current: _OpenFile | None = None
    try:
        for (kind, entry, _ref), future in ordered_map(
                fetch, tasks(), size=lambda task: task[2].length if task[2] else 0):
            if kind == "entry":
                matched += 1
                try:
                    if entry.type == "dir":
                        restorer.directory(entry)
                    elif entry.type == "file":
                        safe_parts(entry.path)
                        current = restorer.begin_file(entry)
                    elif entry.type == "symlink":
                        symlinks.append(entry)  # last, so no file is written through one
                except UnsafePath as exc:
                    restorer.result.refused.append(str(exc))
            elif current is None or current.entry is not entry:
                continue  # the file was refused
            elif kind == "chunk":
                if current.damaged:
                    continue
                try:
                    current.out.write(future.result())
                except IntegrityError as exc:
                    current.damaged = str(exc)
            else:
                handle, current = current, None
                restorer.end_file(handle)
    except OSError as exc:
        if current is not None:
            current.abandon()
        if exc.errno == errno.ENOSPC:
            raise EnigmaError(f"restore stopped: no space left on device under {target}; "
                              f"{restorer.result.files} files restored") from None
        raise
    except BaseException:
        if current is not None:
            current.abandon()
        raise
    if matched == 0 and (prefix or glob):
        raise NotFoundError(f"nothing in backup {backup.id} matches "
                            + " and ".join(x for x in (prefix and f"--path {prefix}",
                                                       glob and f"--glob {glob}") if x))
    for entry in symlinks:
        try:
            restorer.symlink(entry)
        except UnsafePath as exc:
            restorer.result.refused.append(str(exc))
    restorer.finish_dirs()
    return restorer.result


def _is_safe(path: str) -> bool:
    try:
        safe_parts(path)
    except UnsafePath:
        return False
    return True
