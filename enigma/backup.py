"""``enigma backup``: walk the sources, store new chunks, record files in the manifest.

Order of writes is the crash-safety argument: a chunk object is stored (atomically) before
its manifest row exists, and a file row is written only after every chunk it references
has a row. A crash at any moment leaves, at worst, stored chunks the manifest does not
know yet; ``gc`` removes those.
"""

from __future__ import annotations

import os
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from enigma.chunkstore import ChunkStore
from enigma.errors import NotFoundError
from enigma.manifest import BackupRecord, ChunkRecord, ChunkRef, FileEntry, LogEntry
from enigma.repository import Repository

#: Flush pending manifest rows after this many files or chunks (one transaction each).
FILE_BATCH = 1000
CHUNK_BATCH = 256
READ_BLOCK = 1 << 20


@dataclass
class BackupStats:
    """Counts for the summary line, ``--json`` output and the backup log."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes_read: int = 0
    chunks: int = 0
    chunks_new: int = 0
    bytes_new: int = 0
    bytes_stored: int = 0
    skipped: int = 0
    errors: int = 0
    seconds: float = 0.0


@dataclass
class BackupResult:
    backup_id: str
    status: str  # complete | partial
    stats: BackupStats
    problems: list[str] = field(default_factory=list)


def new_backup_id() -> str:
    """16 hex digits: short enough to type a prefix of, random so ids never collide."""
    return os.urandom(8).hex()


def stored_path(path: Path) -> str:
    """Where a source path lives inside a backup: absolute, without the leading '/' (restic's
    convention), so several sources never collide and restores land under DEST/<path>."""
    return path.as_posix().lstrip("/")


class _Backup:
    """One backup run's state: pending manifest rows, stats and the audit log."""

    def __init__(self, repo: Repository, backup_id: str, excluded: set[Path]) -> None:
        self.repo = repo
        self.manifest = repo.manifest
        self.store = ChunkStore(repo)
        self.chunker = repo.chunker
        self.backup_id = backup_id
        self.excluded = excluded
        self.stats = BackupStats()
        self.problems: list[str] = []
        self.pending_files: list[FileEntry] = []
        self.pending_chunks: list[ChunkRecord] = []
        self.pending_log: list[LogEntry] = []

    # -- audit trail -------------------------------------------------------------------

    def note(self, level: str, event: str, path: str | None, message: str) -> None:
        self.pending_log.append(LogEntry(time.time(), level, event, path, message))
        if level in ("warning", "error"):
            self.problems.append(f"{path}: {message}" if path else message)
            self.stats.errors += level == "error"
            self.stats.skipped += 1

    # -- manifest batching -------------------------------------------------------------

    def flush(self) -> None:
        """Record new chunks first, then the files that use them, then the log."""
        if self.pending_chunks:
            self.manifest.add_chunks(self.pending_chunks)
            self.store.forget_pending([c.id for c in self.pending_chunks])
            self.pending_chunks = []
        if self.pending_files:
            self.manifest.add_files(self.backup_id, self.pending_files)
            self.pending_files = []
        if self.pending_log:
            self.manifest.log(self.backup_id, self.pending_log)
            self.pending_log = []

    def add(self, entry: FileEntry) -> None:
        self.pending_files.append(entry)
        if len(self.pending_files) >= FILE_BATCH or len(self.pending_chunks) >= CHUNK_BATCH:
            self.flush()

    # -- walking -----------------------------------------------------------------------

    def walk(self, root: Path) -> Iterator[tuple[Path, os.stat_result]]:
        """Depth-first, sorted, parents before children; never follows symlinks."""
        try:
            root_stat = os.lstat(root)
        except FileNotFoundError:
            self.note("warning", "vanished", stored_path(root), "vanished before it was read")
            return
        yield root, root_stat
        stack = [root] if stat.S_ISDIR(root_stat.st_mode) else []
        while stack:
            directory = stack.pop()
            try:
                with os.scandir(directory) as it:
                    names = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                self.note("error", "unreadable", stored_path(directory),
                          f"cannot list directory: {exc.strerror or exc}")
                continue
            subdirs: list[Path] = []
            for dirent in names:
                path = Path(dirent.path)
                if path in self.excluded:
                    self.note("info", "excluded", stored_path(path),
                              "the repository's own directory is never backed up")
                    continue
                try:
                    st = dirent.stat(follow_symlinks=False)
                except FileNotFoundError:
                    self.note("warning", "vanished", stored_path(path), "vanished during backup")
                    continue
                except OSError as exc:
                    self.note("error", "unreadable", stored_path(path), str(exc.strerror or exc))
                    continue
                yield path, st
                if stat.S_ISDIR(st.st_mode):
                    subdirs.append(path)
            stack.extend(reversed(subdirs))

    # -- one entry ---------------------------------------------------------------------

    def entry(self, path: Path, st: os.stat_result) -> None:
        rel = stored_path(path)
        if not rel:
            return
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            self.note("warning", "skipped", repr(rel), "file name is not valid UTF-8")
            return
        base = dict(path=rel, mode=stat.S_IMODE(st.st_mode), mtime_ns=st.st_mtime_ns,
                    uid=st.st_uid, gid=st.st_gid, inode=st.st_ino, ctime_ns=st.st_ctime_ns)
        if stat.S_ISDIR(st.st_mode):
            self.stats.dirs += 1
            self.add(FileEntry(type="dir", **base))
        elif stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(path)
            except OSError as exc:
                self.note("warning", "unreadable", rel, f"cannot read symlink: {exc.strerror}")
                return
            self.stats.symlinks += 1
            self.add(FileEntry(type="symlink", target=target, **base))
        elif stat.S_ISREG(st.st_mode):
            self.regular_file(path, rel, base)
        else:
            self.pending_log.append(LogEntry(time.time(), "info", "skipped", rel,
                                             "special file (device, fifo or socket)"))

    def regular_file(self, path: Path, rel: str, base: dict) -> None:
        try:
            handle = open(path, "rb", buffering=READ_BLOCK)  # noqa: SIM115 - closed below
        except FileNotFoundError:
            self.note("warning", "vanished", rel, "vanished before it was read")
            return
        except OSError as exc:
            self.note("error", "unreadable", rel, f"cannot open: {exc.strerror or exc}")
            return
        refs: list[ChunkRef] = []
        offset = 0
        try:
            with handle:
                for piece in self.chunker.chunks(handle):
                    stored = self.store.put(piece)
                    refs.append(ChunkRef(stored.chunk_id, offset, stored.size))
                    offset += stored.size
                    self.stats.chunks += 1
                    if stored.record is not None:
                        self.pending_chunks.append(stored.record)
                        self.stats.chunks_new += 1
                        self.stats.bytes_new += stored.record.size
                        self.stats.bytes_stored += stored.record.stored_size
        except OSError as exc:
            self.note("error", "unreadable", rel, f"read failed: {exc.strerror or exc}")
            return
        self.stats.files += 1
        self.stats.bytes_read += offset
        base["size"] = offset
        self.add(FileEntry(type="file", chunks=refs, **base))


def run_backup(repo: Repository, sources: list[str | os.PathLike[str]]) -> BackupResult:
    """Back up ``sources``; raise on storage failure (after marking the backup failed)."""
    roots = [Path(os.path.abspath(s)) for s in sources]
    for root in roots:
        if not os.path.lexists(root):
            raise NotFoundError(f"source {root} does not exist")
    started = time.time()
    backup_id = new_backup_id()
    chunker = repo.chunker
    manifest = repo.manifest
    excluded = {repo.config.config_dir, repo.config.db_path.parent}
    excluded |= {Path(p.options["path"]) for p in repo.config.providers
                 if isinstance(p.options.get("path"), str)}
    run = _Backup(repo, backup_id, excluded)
    manifest.begin_backup(BackupRecord(
        id=backup_id, created_at=started, sources=[str(r) for r in roots],
        hostname=socket.gethostname(),
        params={"chunker": chunker.name, **chunker.params,
                "compression": repo.compressor.name if repo.compressor else ""}))
    status = "failed"
    try:
        for root in roots:
            for path, st in run.walk(root):
                run.entry(path, st)
        status = "partial" if run.problems else "complete"
    finally:
        run.stats.seconds = round(time.time() - started, 3)
        run.pending_log.append(LogEntry(
            time.time(), "error" if status == "failed" else "info", "finished", None,
            f"status {status}: {run.stats.files} files, {run.stats.bytes_read} bytes read, "
            f"{run.stats.bytes_stored} bytes stored"))
        run.flush()  # every pending row points at chunks already stored, even on failure
        manifest.finish_backup(backup_id, time.time(), status, asdict(run.stats))
    return BackupResult(backup_id, status, run.stats, run.problems)
