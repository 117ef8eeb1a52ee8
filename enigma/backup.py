"""``enigma backup``: walk the sources, store new chunks in parallel, record files.

Order of writes is the crash-safety argument: a chunk object is stored (and, for providers
that defer it, made durable by ``sync``) before its manifest row exists, and a file row is
written only after every chunk it references has a row. A crash at any moment leaves, at
worst, stored chunks the manifest does not know yet; ``gc`` removes those.

Unchanged directories are linked to the previous backup's version of them (a row per
directory, not per file), and unchanged files (same size, mtime, ctime and inode as in the
previous backup of the same source) reuse their chunk lists without being read, like
restic's trees and file cache (``enigma.filecache``).

A re-run after a kill resumes (docs/consistency.md): the file cache includes what the
interrupted run recorded, and objects it stored but had not recorded are reused, not
uploaded again, once a length check shows they are whole.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import stat
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO

from enigma.chunkstore import ChunkStore, StoredChunk, stored_chunks
from enigma.errors import NotFoundError, StorageError
from enigma.filecache import DirVersion, FileCache
from enigma.manifest import BackupRecord, ChunkRecord, ChunkRef, FileEntry, LogEntry
from enigma.pipeline import ChunkUploader
from enigma.progress import NO_PROGRESS, Progress, TotalsScanner
from enigma.repository import Repository
from enigma.telemetry import TELEMETRY, TelemetrySnapshot

#: Flush manifest rows after this many files or new chunks, or this many seconds: big
#: batches are fast, short intervals bound what a crash makes the next run redo.
FILE_BATCH = 5000
CHUNK_BATCH = 1000
FLUSH_SECONDS = 1.0
#: Files up to this size are read whole and cut in memory (no per-file stream buffer).
WHOLE_FILE_LIMIT = 16 * 1024 * 1024
#: Single-chunk files are handed to the pipeline in groups of this many files or bytes.
SMALL_GROUP_FILES = 64
SMALL_GROUP_BYTES = 4 * 1024 * 1024
#: A running backup records its partial stats at most this often (live progress).
PROGRESS_SECONDS = 1.0
#: Entries of changed directories listed ahead of the backup while the keys unlock (path
#: and lstat, about 1 KB each): enough for the 0.3-0.4 s an Argon2id unlock takes, a bound
#: on what it holds. An unchanged directory holds none: it is judged as it is listed.
WALK_AHEAD_ENTRIES = 20_000
#: A backup that grows the manifest to this multiple of its size compacts it afterwards
#: (``Manifest.compact``): a first backup always, later ones only after large additions,
#: so all compactions together cost a few times one compaction of the final size.
COMPACT_GROWTH = 1.5


@dataclass
class BackupStats:
    """Counts for the summary line, ``--json`` output and the backup log."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    bytes_total: int = 0  # size of every file in the backup
    bytes_read: int = 0  # what had to be read (new and changed files)
    chunks: int = 0
    chunks_new: int = 0
    bytes_new: int = 0  # plaintext of new chunks
    bytes_stored: int = 0  # sealed size of new chunks
    bytes_uploaded: int = 0  # sealed bytes sent, counting every copy
    skipped: int = 0
    errors: int = 0
    seconds: float = 0.0
    #: Chunk objects an interrupted earlier run had stored and this one found whole
    #: instead of uploading them again (only when resuming; see ``leftovers``).
    chunks_resumed: int = 0
    #: Chunks of the files read that were not stored again (the repository, or this run,
    #: already had them) and their plaintext bytes.
    chunks_deduplicated: int = 0
    bytes_deduplicated: int = 0
    #: bytes_read / bytes_new: plaintext read per new plaintext byte (None: nothing new).
    dedup_ratio: float | None = None
    #: bytes_new / bytes_stored: plaintext per stored byte of the new chunks.
    compression_ratio: float | None = None
    #: Failed storage calls and retries during the run, by provider label.
    backend_errors: dict[str, int] = field(default_factory=dict)
    backend_retries: dict[str, int] = field(default_factory=dict)

    def add_figures(self, pipeline: TelemetrySnapshot) -> None:
        """Fill the derived figures from the stats and the pipeline's counters of the run
        (the same ones ``enigma serve`` exports as Prometheus metrics)."""
        self.chunks_deduplicated = pipeline.chunks_deduplicated
        self.bytes_deduplicated = pipeline.bytes_deduplicated
        self.dedup_ratio = round(self.bytes_read / self.bytes_new, 3) if self.bytes_new else None
        self.compression_ratio = (round(self.bytes_new / self.bytes_stored, 3)
                                  if self.bytes_stored else None)
        self.backend_errors = pipeline.errors_by_provider()
        self.backend_retries = dict(pipeline.backend_retries)


@dataclass
class BackupResult:
    backup_id: str
    status: str  # complete | partial
    stats: BackupStats
    problems: list[str] = field(default_factory=list)


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _by_provider(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "0"


def new_backup_id() -> str:
    """16 hex digits: short enough to type a prefix of, random so ids never collide."""
    return os.urandom(8).hex()


def stored_path(path: str | os.PathLike[str]) -> str:
    """Where a source path lives inside a backup: absolute, without the leading '/' (restic's
    convention), so several sources never collide and restores land under DEST/<path>.

    Takes plain strings: the walk builds no ``Path`` per entry (a quarter of a no-change
    re-backup's walking time was ``pathlib`` object construction)."""
    text = os.fspath(path)
    if os.sep != "/":  # pragma: no cover - POSIX here
        text = text.replace(os.sep, "/")
    return text.lstrip("/")


@dataclass
class _Pending:
    """A file whose chunks are still being stored."""

    entry: FileEntry
    futures: list[Future[StoredChunk]]
    small: bool = False  # read by a worker (see ``read_small_file``)
    new: bool = True


class FileGrew(OSError):
    """A "small" file outgrew one chunk while it was being backed up."""


def read_small_file(path: str, limit: int) -> bytes:
    """Read a file expected to be one chunk (runs on a pipeline worker)."""
    with open(path, "rb", buffering=0) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise FileGrew(0, "file grew past one chunk while being read; it will be "
                          "backed up next time")
    return data


Listing = tuple[str | None, list[tuple[str, os.stat_result]]]
"""A listed directory and its entries with their ``lstat`` (see ``_Backup.walk``)."""
Judged = tuple[list[tuple[str, os.stat_result]], DirVersion | None]
"""A listing's entries and the previous version of its directory when nothing in it
changed (then no entries: linking the version needs none)."""


def judge(walk: Iterator[Listing], cache: FileCache, force: bool) -> Iterator[Judged]:
    """Each listed directory compared with ``cache`` (never with ``force``)."""
    for directory, children in walk:
        version = None
        if directory is not None and not force:
            version = cache.unchanged_dir(stored_path(directory), children, stored_path)
        yield ([], version) if version is not None else (children, None)


def walk_ahead(walk: Iterator[Judged], waiting: Callable[[], bool],
               limit: int = WALK_AHEAD_ENTRIES) -> Iterator[Judged]:
    """``walk``, with as much of it listed and judged at once as fits while ``waiting()``
    holds (at most ``limit`` entries held): it is key-free system calls and comparisons,
    so it runs beside a key unlock. Items are let go as they are handed on."""
    ahead: deque[Judged] = deque()
    held = 0
    while held < limit and waiting():  # now, not on the first ``next``
        item = next(walk, None)
        if item is None:
            break
        ahead.append(item)
        held += len(item[0])

    def listings() -> Iterator[Judged]:
        while ahead:
            yield ahead.popleft()
        yield from walk

    return listings()


class _Backup:
    """One backup run's state: the walk, in-flight files, pending manifest rows, the log."""

    uploader: ChunkUploader  # set by ``start_pipeline``, once the keys are unlocked

    def __init__(self, repo: Repository, backup_id: str, excluded: set[str],
                 force: bool) -> None:
        self.repo = repo
        self.manifest = repo.manifest
        self.chunker = repo.chunker
        self.backup_id = backup_id
        self.excluded = excluded
        self.force = force
        self.cache = FileCache()
        self.linked: list[int] = []  # unchanged directory versions, not yet recorded
        self.stats = BackupStats()
        self.problems: list[str] = []
        self.in_flight: deque[_Pending] = deque()
        self.small: list[tuple[FileEntry, str, bool]] = []  # single-chunk files, not queued
        self.small_bytes = 0
        self.loose: list[Future[StoredChunk]] = []  # chunks of files that failed mid-read
        self.ready_files: list[FileEntry] = []
        self.ready_chunks: list[ChunkRecord] = []
        self.queued: set[bytes] = set()
        self.pending_log: list[LogEntry] = []
        self.last_flush = time.monotonic()
        self.progress: Progress = NO_PROGRESS
        self.last_progress = self.last_flush
        self.started = time.time()
        self.telemetry_at_start = TELEMETRY.snapshot()
        #: Bytes read so far of the big file being cut (not yet in stats.bytes_read).
        self.reading = 0

    # -- audit trail -------------------------------------------------------------------

    def note(self, level: str, event: str, path: str | None, message: str) -> None:
        self.pending_log.append(LogEntry(time.time(), level, event, path, message))
        if level in ("warning", "error"):
            self.progress.error(path, message)
            self.problems.append(f"{path}: {message}" if path else message)
            self.stats.errors += level == "error"
            self.stats.skipped += 1

    # -- completion and manifest batching ----------------------------------------------

    def _take_records(self, futures: list[Future[StoredChunk]]) -> None:
        for future in futures:
            stored = future.result()  # a storage failure stops the backup here
            # A copy of a chunk another file had in flight has no record of its own; if
            # it drains first (its group was claimed second but its file comes first),
            # it must record the chunk, or its file row would point at no chunk row.
            record = stored.record or self.uploader.pending_record(stored.chunk_id)
            if record is not None and record.id not in self.queued:
                self.queued.add(record.id)
                self.ready_chunks.append(record)
                self.stats.chunks_new += 1
                self.stats.bytes_new += record.size
                self.stats.bytes_stored += record.stored_size
                self.stats.bytes_uploaded += self.uploader.store.uploaded_size(record)

    def queue_small(self) -> None:
        """Hand the waiting single-chunk files to the pipeline as one group."""
        if not self.small:
            return
        limit = self.chunker.single_chunk_limit
        futures = self.uploader.submit_many(
            [partial(read_small_file, path, limit) for _entry, path, _new in self.small],
            [entry.size for entry, _path, _new in self.small])
        for (entry, _path, new), future in zip(self.small, futures, strict=True):
            self.in_flight.append(_Pending(entry, [future], small=True, new=new))
        self.small = []
        self.small_bytes = 0

    def drain(self, *, wait: bool = False) -> None:
        """Move finished files (in order) to the manifest batch; flush when it is due."""
        if wait:
            self.queue_small()
        done_loose = [f for f in self.loose if wait or f.done()]
        if done_loose:
            self._take_records(done_loose)
            self.loose = [f for f in self.loose if f not in done_loose]
        while self.in_flight and (wait or all(f.done() for f in self.in_flight[0].futures)):
            pending = self.in_flight.popleft()
            if pending.small:
                if not self._small_file_read(pending):
                    continue
                self.progress.advance(files=1, bytes=pending.entry.size)
            self._take_records(pending.futures)
            for ref, future in zip(pending.entry.chunks, pending.futures, strict=True):
                ref.chunk_id = future.result().chunk_id
            self.ready_files.append(pending.entry)
            if wait and time.monotonic() - self.last_flush >= FLUSH_SECONDS:
                self.flush()  # the final wait can be long: keep recording as files finish
        if (len(self.ready_files) >= FILE_BATCH or len(self.ready_chunks) >= CHUNK_BATCH
                or len(self.linked) >= FILE_BATCH
                or time.monotonic() - self.last_flush >= FLUSH_SECONDS):
            self.flush()

    def _small_file_read(self, pending: _Pending) -> bool:
        """Account for a small file read on a worker; False if reading it failed."""
        entry, (future,) = pending.entry, pending.futures
        error = future.exception()
        if isinstance(error, OSError):
            self.stats.files -= 1
            self.stats.files_new -= 1 if pending.new else 0
            self.stats.files_changed -= 0 if pending.new else 1
            self.stats.bytes_total -= entry.size
            self.stats.bytes_read -= entry.size
            self.stats.chunks -= 1
            if isinstance(error, FileNotFoundError):
                self.note("warning", "vanished", entry.path, "vanished before it was read")
            else:
                self.note("error", "unreadable", entry.path,
                          f"read failed: {error.strerror or error}")
            return False
        if error is None:
            size = future.result().size  # the file may have changed since it was listed
            delta = size - entry.size
            self.stats.bytes_total += delta
            self.stats.bytes_read += delta
            entry.size = entry.chunks[0].length = size
        return True

    def flush(self) -> None:
        """Make chunks durable, record them, then the files that use them, then the log."""
        if self.ready_chunks:
            self.uploader.sync()
            self.manifest.add_chunks(self.ready_chunks)
            self.uploader.recorded(c.id for c in self.ready_chunks)
            self.ready_chunks = []
        if self.ready_files:
            self.manifest.add_files(self.backup_id, self.ready_files)
            self.ready_files = []
        if self.linked:
            self.manifest.link_dirs(self.backup_id, self.linked)
            self.linked = []
        if self.pending_log:
            self.manifest.log(self.backup_id, self.pending_log)
            self.pending_log = []
        self.last_flush = time.monotonic()
        if self.last_flush - self.last_progress >= PROGRESS_SECONDS:
            # Partial stats for watchers (the dashboard's live progress).
            self.stats.seconds = round(time.time() - self.started, 3)
            partial = asdict(self.stats)
            partial["bytes_read"] += self.reading  # a big file part-way through
            self.manifest.backup_progress(self.backup_id, partial)
            self.last_progress = self.last_flush

    def salvage(self) -> None:
        """After a failure: record every chunk that did get stored, so a re-run reuses it."""
        self.small = []
        futures = self.loose + [f for p in self.in_flight for f in p.futures]
        for future in futures:
            if future.done() and not future.cancelled() and future.exception() is None:
                self._take_records([future])
        self.in_flight.clear()
        self.loose = []

    # -- walking -----------------------------------------------------------------------

    def start_pipeline(self) -> None:
        """Open the chunk pipeline; it seals, so this waits for the keys."""
        self.uploader = ChunkUploader(ChunkStore(self.repo),
                                      pack_size=self.repo.config.pack_size)

    def source(self, root: Path) -> Iterator[Judged]:
        """Load ``root``'s file cache and start its walk; while the keys are still
        being unlocked, the walk and the comparison of directories go ahead."""
        self.cache = FileCache() if self.force else FileCache.load(
            self.manifest, stored_path(root), str(root))
        return walk_ahead(judge(self.walk(root), self.cache, self.force),
                          self.repo.unlocking)

    def walk(self, root: Path) -> Iterator[Listing]:
        """Depth-first, sorted, parents before children; never follows symlinks.

        Yields ``(None, [(root, stat)])`` first, then ``(directory, children)`` for each
        directory listed, so a whole directory can be judged unchanged at once.
        """
        try:
            root_stat = os.lstat(root)
        except FileNotFoundError:
            self.note("warning", "vanished", stored_path(root), "vanished before it was read")
            return
        yield None, [(os.fspath(root), root_stat)]
        stack = [os.fspath(root)] if stat.S_ISDIR(root_stat.st_mode) else []
        while stack:
            directory = stack.pop()
            try:
                with os.scandir(directory) as it:
                    names = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                self.note("error", "unreadable", stored_path(directory),
                          f"cannot list directory: {exc.strerror or exc}")
                continue
            children: list[tuple[str, os.stat_result]] = []
            subdirs: list[str] = []
            for dirent in names:
                path = dirent.path
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
                children.append((path, st))
                if stat.S_ISDIR(st.st_mode):
                    subdirs.append(path)
            yield directory, children
            stack.extend(reversed(subdirs))

    def directory(self, children: list[tuple[str, os.stat_result]],
                  version: DirVersion | None) -> None:
        """Record a listed directory: link its previous version when nothing in it
        changed (``judge``), else entry by entry."""
        if version is not None:
            self.link(version)
            return
        for path, st in children:
            self.entry(path, st)

    def link(self, version: DirVersion) -> None:
        """Count a linked directory's entries as if each had been found unchanged."""
        self.linked.append(version.id)
        files = size = 0
        for kind, entry_size, chunk_count in version.entries():
            if kind == "dir":
                self.stats.dirs += 1
            elif kind == "symlink":
                self.stats.symlinks += 1
            else:
                files += 1
                size += entry_size
                self.stats.chunks += chunk_count
        self.stats.files += files
        self.stats.files_unchanged += files
        self.stats.bytes_total += size
        self.progress.advance(files=files, bytes=size)
        self.drain()

    # -- one entry ---------------------------------------------------------------------

    def entry(self, path: str, st: os.stat_result) -> None:
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
            self.ready_files.append(FileEntry(type="dir", **base))
        elif stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(path)
            except OSError as exc:
                self.note("warning", "unreadable", rel, f"cannot read symlink: {exc.strerror}")
                return
            self.stats.symlinks += 1
            self.ready_files.append(FileEntry(type="symlink", target=target, **base))
        elif stat.S_ISREG(st.st_mode):
            self.regular_file(path, rel, base, st)
        else:
            self.pending_log.append(LogEntry(time.time(), "info", "skipped", rel,
                                             "special file (device, fifo or socket)"))
        self.drain()

    def regular_file(self, path: str, rel: str, base: dict, st: os.stat_result) -> None:
        cached = None if self.force else self.cache.file(rel)
        if cached is not None and cached.unchanged(st):
            self.stats.files += 1
            self.stats.files_unchanged += 1
            self.stats.bytes_total += cached.size
            self.stats.chunks += cached.chunk_count
            self.ready_files.append(FileEntry(type="file", size=cached.size,
                                              chunk_list=cached.chunk_list, **base))
            self.progress.advance(files=1, bytes=cached.size)
            return
        if 0 < st.st_size <= self.chunker.single_chunk_limit:
            self.small_file(path, st.st_size, cached is None, base)
            return
        try:
            handle = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
        except FileNotFoundError:
            self.note("warning", "vanished", rel, "vanished before it was read")
            return
        except OSError as exc:
            self.note("error", "unreadable", rel, f"cannot open: {exc.strerror or exc}")
            return
        refs: list[ChunkRef] = []
        futures: list[Future[StoredChunk]] = []
        offset = 0
        self.queue_small()  # keep files in order
        self.progress.current_file(rel)
        try:
            with handle:
                for piece in self.pieces(handle, st.st_size):
                    future = self.uploader.submit(piece)
                    futures.append(future)
                    refs.append(ChunkRef(b"", offset, len(piece)))
                    offset += len(piece)
                    self.reading = offset
                    self.progress.advance(bytes=len(piece))
                    self.drain()
        except OSError as exc:
            self.reading = 0
            self.loose.extend(futures)
            self.note("error", "unreadable", rel, f"read failed: {exc.strerror or exc}")
            return
        self.reading = 0
        self.stats.files += 1
        if cached is None:
            self.stats.files_new += 1
        else:
            self.stats.files_changed += 1
        self.stats.bytes_total += offset
        self.stats.bytes_read += offset
        self.stats.chunks += len(refs)
        self.progress.advance(files=1)
        entry = FileEntry(type="file", size=offset, chunks=refs, **base)
        self.in_flight.append(_Pending(entry, futures))

    def small_file(self, path: str, size: int, new: bool, base: dict) -> None:
        """A file that is one chunk: queue it with others like it; a worker reads it."""
        self.stats.files += 1
        self.stats.files_new += new
        self.stats.files_changed += not new
        self.stats.bytes_total += size
        self.stats.bytes_read += size
        self.stats.chunks += 1
        entry = FileEntry(type="file", size=size, chunks=[ChunkRef(b"", 0, size)], **base)
        self.progress.current_file(entry.path)
        self.small.append((entry, path, new))
        self.small_bytes += size
        if len(self.small) >= SMALL_GROUP_FILES or self.small_bytes >= SMALL_GROUP_BYTES:
            self.queue_small()

    def pieces(self, handle: BinaryIO, size: int) -> Iterator[bytes | memoryview]:
        """The file's chunks, each safe to keep until its upload is done.

        Small files are one read and, below the chunker's single-chunk limit, one chunk;
        big files stream through the chunker and each chunk is copied out of its buffer.
        """
        if size <= WHOLE_FILE_LIMIT:
            data = handle.read()
            if not data:
                return
            if len(data) <= self.chunker.single_chunk_limit:
                yield data
            else:
                yield from self.chunker.chunks_of(data)
            if len(data) == size:
                return
            # the file grew while we read it: continue with the stream
        for piece in self.chunker.chunks(handle):
            yield bytes(piece)


def leftovers(repo: Repository) -> dict[str, set[str]]:
    """Chunk objects an interrupted backup stored but never recorded, per provider.

    Only looked for when the manifest shows an interrupted backup (one still "running":
    killed, or running now beside this one; gc removes the stale ones), so an ordinary
    backup never lists its providers. Such objects are what a re-run would otherwise
    upload again. A provider that cannot be listed just gets no shortcut.
    """
    if not any(b.status == "running" for b in repo.manifest.list_backups()):
        return {}
    found: dict[str, set[str]] = {}
    for label, provider in repo.providers.items():
        try:
            ids = stored_chunks(label, provider)
        except StorageError:
            continue
        known = repo.manifest.known_chunks(ids)
        found[label] = {k for i, k in ids.items() if i not in known}
    return found


def scan_sizes(roots: list[Path], excluded: set[str]) -> Iterator[int]:
    """The size of each regular file a backup of ``roots`` will meet: the progress totals,
    counted on a thread beside the backup (``TotalsScanner``). Unsorted and silent: errors
    are the backup's to report."""
    for root in roots:
        try:
            st = os.lstat(root)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            yield st.st_size
        if not stat.S_ISDIR(st.st_mode):
            continue
        stack: list[str | Path] = [root]
        while stack:
            try:
                with os.scandir(stack.pop()) as it:
                    entries = list(it)
            except OSError:
                continue
            for dirent in entries:
                try:
                    if dirent.path in excluded:
                        continue
                    if dirent.is_dir(follow_symlinks=False):
                        stack.append(dirent.path)
                    elif dirent.is_file(follow_symlinks=False):
                        yield dirent.stat(follow_symlinks=False).st_size
                except OSError:
                    continue


def outermost(roots: list[Path]) -> list[Path]:
    """The sources without repeats and without those inside another source (whose walk
    covers them), in the order given: each path is recorded once per backup."""
    kept: list[Path] = []
    for root in roots:
        if root not in kept and not any(other in root.parents for other in roots):
            kept.append(root)
    return kept


def run_backup(repo: Repository, sources: list[str | os.PathLike[str]], *,
               force: bool = False, progress: Progress = NO_PROGRESS) -> BackupResult:
    """Back up ``sources``; raise on storage failure (after marking the backup failed).

    ``progress`` gets files and bytes as they are done (read, or found unchanged); its
    totals come from ``scan_sizes`` running beside the backup when it wants them.
    """
    roots = outermost([Path(os.path.abspath(s)) for s in sources])
    for root in roots:
        if not os.path.lexists(root):
            raise NotFoundError(f"source {root} does not exist")
    repo.unlock_beside()
    started = time.time()
    backup_id = new_backup_id()
    manifest = repo.manifest
    chunker = repo.chunker
    # As plain strings, the form the walks compare with (``DirEntry.path``).
    excluded = {os.fspath(repo.config.config_dir), os.fspath(repo.config.db_path.parent)}
    excluded |= {os.fspath(Path(p.options["path"])) for p in repo.config.providers
                 if isinstance(p.options.get("path"), str)}
    run = _Backup(repo, backup_id, excluded, force)
    run.progress = progress
    progress.begin("backup")
    try:
        sources = (run.source(root) for root in roots)
        first = next(sources, iter(()))  # key-free: done while the keys unlock
        run.start_pipeline()
    except BaseException:
        progress.end()
        raise
    pages_at_start = manifest.pages()
    run.uploader.resume_from(leftovers(repo))  # before ours shows up as "running"
    manifest.begin_backup(BackupRecord(
        id=backup_id, created_at=started, sources=[str(r) for r in roots],
        hostname=socket.gethostname(),
        params={"chunker": chunker.name, **chunker.params,
                "compression": repo.compressor.name if repo.compressor else ""}))
    scanner = TotalsScanner(progress, partial(scan_sizes, roots, excluded)).start()
    status = "failed"
    try:
        for listings in itertools.chain([first], sources):  # each root's cache in turn
            for children, version in listings:
                run.directory(children, version)
        run.drain(wait=True)
        run.flush()
        status = "partial" if run.problems else "complete"
    except BaseException:
        run.uploader.close(cancel=True)
        run.salvage()
        with contextlib.suppress(Exception):  # the original error is the one to report
            run.flush()  # keep what is safely stored, so a re-run does not upload it again
        raise
    finally:
        scanner.stop()
        progress.end()
        run.uploader.close()
        run.stats.chunks_resumed = run.uploader.reused
        run.stats.seconds = round(time.time() - started, 3)
        run.stats.add_figures(TELEMETRY.snapshot() - run.telemetry_at_start)
        s = run.stats
        manifest.log(backup_id, [LogEntry(
            time.time(), "error" if status == "failed" else "info", "finished", None,
            f"status {status}: {s.files_new} new, {s.files_changed} changed, "
            f"{s.files_unchanged} unchanged files; {s.bytes_read} bytes read, "
            f"{s.bytes_uploaded} bytes uploaded; {s.chunks_new} chunks written, "
            f"{s.chunks_deduplicated} deduplicated; dedup ratio {_ratio(s.dedup_ratio)}, "
            f"compression ratio {_ratio(s.compression_ratio)}; backend errors "
            f"{_by_provider(s.backend_errors)}, retries {_by_provider(s.backend_retries)}")])
        manifest.finish_backup(backup_id, time.time(), status, asdict(run.stats))
    if manifest.pages() >= COMPACT_GROWTH * pages_at_start:
        manifest.compact()
    return BackupResult(backup_id, status, run.stats, run.problems)
