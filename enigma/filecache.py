"""The file cache: what a re-backup compares the disk with, so unchanged data is not read.

Two levels, like restic's trees and its file cache together:

- **Directories.** A directory whose listing is exactly what the newest finished backup of
  the same source recorded for it (same names; same type, mode, owner, mtime, ctime and
  inode for each, same size for files) is not recorded again: the backup links that
  directory version (``Manifest.link_dirs``), one row instead of a row per entry.
- **Files.** In a directory that did change, a regular file with the same size, mtime,
  ctime and inode as before shares its recorded chunk list without being read.

An interrupted ("running") backup's file rows count for the file level (a file row is
written only after every chunk it uses has its row: that is what makes a re-run after a
kill skip what the killed run finished), but never for the directory level: its
directory versions may be incomplete.

Entries are kept as the manifest's plain rows (see ``Manifest.file_cache``): building an
object per entry was most of a no-change re-backup's cache cost.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from enigma.manifest import Manifest

_TYPES = {stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFREG: "file"}

# Positions in a ``Manifest.file_cache`` row (``_FILE_COLUMNS``, chunk count, list id).
_PATH, _TYPE, _SIZE, _MTIME, _CTIME, _INODE, _COUNT, _LIST = 1, 2, 3, 5, 10, 9, 11, 12


def _row_key(row: tuple) -> tuple:
    """(type, size, mode, mtime, uid, gid, inode, ctime) of a row."""
    return (*row[2:6], *row[7:11])


def stat_key(st: os.stat_result) -> tuple:
    """What an entry with this stat would be recorded as, in ``_row_key``'s shape (a
    directory or symlink is recorded with size 0; a symlink's target cannot change
    without a new inode or ctime)."""
    kind = _TYPES.get(stat.S_IFMT(st.st_mode))
    return (kind, st.st_size if kind == "file" else 0, stat.S_IMODE(st.st_mode),
            st.st_mtime_ns, st.st_uid, st.st_gid, st.st_ino, st.st_ctime_ns)


@dataclass
class CachedFile:
    """A regular file as an earlier backup recorded it."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    chunk_count: int
    chunk_list: int | None  # None: no chunks (an empty file)

    def unchanged(self, st: os.stat_result) -> bool:
        """True when the file's content can be taken as the cached one's."""
        return (self.size == st.st_size and self.mtime_ns == st.st_mtime_ns
                and self.ctime_ns == st.st_ctime_ns and self.inode == st.st_ino)


@dataclass
class DirVersion:
    """A directory's entries as the previous backup recorded them: stored path -> row."""

    id: int
    rows: dict[str, tuple] = field(default_factory=dict)

    def entries(self) -> Iterator[tuple[str, int, int]]:
        """(type, size, chunk count) of each entry, for a linked directory's counts."""
        return ((row[_TYPE], row[_SIZE], row[_COUNT]) for row in self.rows.values())


class FileCache:
    """The previous backup of one source (``load``), queried entry by entry."""

    def __init__(self) -> None:
        self.files: dict[str, CachedFile] = {}
        self.dirs: dict[str, DirVersion] = {}

    @classmethod
    def load(cls, manifest: Manifest, root_path: str, source: str) -> FileCache:
        """The cache for the source ``source`` (as backups list it), stored under
        ``root_path``: the newest finished backup of it, overlaid with what interrupted
        backups since then recorded (their rows win: they are newer)."""
        cache = cls()
        files, dirs = cache.files, cache.dirs
        below = root_path + "/" if root_path else ""
        for backup in reversed(manifest.list_backups()):
            if backup.status not in ("complete", "partial", "running") \
                    or source not in backup.sources:
                continue
            finished = backup.status != "running"
            version: DirVersion | None = None
            for dir_id, dir_path, row in manifest.file_cache(backup.id, root_path or None):
                path = row[_PATH]
                if row[_TYPE] == "file" and path not in files:
                    files[path] = CachedFile(row[_SIZE], row[_MTIME], row[_CTIME],
                                             row[_INODE], row[_COUNT], row[_LIST])
                if not finished:
                    continue
                if version is None or version.id != dir_id:
                    version = None
                    if dir_path == root_path or dir_path.startswith(below):
                        version = dirs.setdefault(dir_path, DirVersion(dir_id))
                if version is not None and version.id == dir_id:
                    version.rows[path] = row
            if finished:
                break
        return cache

    def file(self, path: str) -> CachedFile | None:
        return self.files.get(path)

    def unchanged_dir(self, path: str, children: Sequence[tuple[str, os.stat_result]],
                      stored: Callable[[str], str]) -> DirVersion | None:
        """The previous version of the directory at stored ``path`` if ``children``
        (path on disk, stat) is exactly what it holds, else None. ``stored`` maps a path
        on disk to its stored path, called only when there is a version to compare."""
        version = self.dirs.get(path)
        if version is None or len(version.rows) != len(children):
            return None
        rows = version.rows
        for child, st in children:
            row = rows.get(stored(child))
            if row is None or _row_key(row) != stat_key(st):
                return None
        return version
