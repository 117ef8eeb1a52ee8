"""``enigma restore``: rebuild files, directories and symlinks under DEST, and nowhere else.

Whatever the manifest says, an entry is written only at a path that is relative, has no
``..`` and reaches DEST without passing through a symlink. Files are written to a temp
name and renamed, so a file whose chunks are damaged is reported and never left
half-written; the rest of the backup is still restored.

Staying inside DEST: DEST is opened once, and each directory below it is opened relative
to its parent's descriptor with ``O_NOFOLLOW | O_DIRECTORY``, so the kernel refuses a
symlink or a file anywhere on the way (the entry is then refused). Everything is created
relative to such a descriptor (``mkdirat``, ``openat`` with ``O_CREAT | O_EXCL |
O_NOFOLLOW``, ``renameat``, ``symlinkat``), never through a path resolved a second time,
so this holds even against someone swapping symlinks into DEST while the restore runs
(who can still move a directory elsewhere, or change what lands in DEST; DEST is meant
to be written by this restore alone). The descriptors of recently used directories stay
open in a small LRU: entries arrive in path order, so a directory is looked up about
once, not once per file and per parent as a path-based check would.

Existing entries: a file or symlink already at an entry's name is replaced by the rename
(the link itself, never what it points to), a directory never is (that entry is
refused). Without ``--overwrite`` DEST must be empty (or missing) when the restore
starts; temp names are unique to each restore, so an earlier run's leftovers or an
entry that looks like a temp name are never touched.

Throughput: small files (one chunk, or up to ``SMALL_FILE`` bytes) are fetched,
authenticated and written whole by worker threads, in batches of files of one directory,
so each costs a handful of system calls and no hand-off between threads. Larger files
have their chunks fetched in parallel and written in order by the main thread. Symlinks
are created last (so no file is ever written through one), and directory modes and
mtimes are applied at the very end, deepest first.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import itertools
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

from enigma.chunkstore import ChunkStore
from enigma.errors import EnigmaError, IntegrityError, NotFoundError
from enigma.manifest import BackupRecord, ChunkRecord, ChunkRef, FileEntry
from enigma.pipeline import DEFAULT_BUDGET, cpu_count, ordered_map
from enigma.progress import NO_PROGRESS, Progress, TotalsScanner
from enigma.repository import Repository

#: Directories are held as O_PATH descriptors where the platform has them: usable as the
#: base of *at calls, and they need no read permission on the directory.
_DIR_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: A temp file is always new: never an existing file, symlink or hard link at that name.
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: Files with one chunk, or up to this size, are fetched and written whole by a worker.
SMALL_FILE = 1 << 20
#: At most this many small files (and this many bytes) of one directory in a batch.
BATCH_FILES = 64
BATCH_BYTES = 1 << 20
#: Each batch counts as at least this much against the read-ahead budget: it bounds the
#: batches in flight, and so the directory descriptors they hold open.
MIN_BATCH_CHARGE = DEFAULT_BUDGET // 128
#: Directory descriptors kept open for reuse (besides those in-flight work holds).
OPEN_DIRS = 64


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
    parts = path.split("/")
    if "" in parts or "." in parts or ".." in parts or "\0" in path:
        raise UnsafePath(f"refusing unsafe path {path!r}")
    return parts


def is_nonempty_dir(path: str | os.PathLike[str]) -> bool:
    try:
        with os.scandir(path) as it:
            return any(True for _ in it)
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        raise EnigmaError(f"destination {path} exists and is not a directory") from None


class _NotADirectory(Exception):
    """``rel`` (a directory on the way to an entry) is a symlink, a file, or will be one."""

    def __init__(self, rel: str) -> None:
        super().__init__(rel)
        self.rel = rel


class _Dir:
    """An open directory under DEST; ``users`` counts the work in flight that needs it."""

    __slots__ = ("cached", "fd", "users")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.users = 0
        self.cached = True


class _Dirs:
    """Directories under DEST by relative path ('' is DEST), opened without following
    symlinks, the most recently used kept open. Used from the main thread only; workers
    get a pinned ``_Dir`` and only read its ``fd``."""

    def __init__(self, root_fd: int, pending_files: set[str]) -> None:
        self.root = _Dir(root_fd)
        self.cache: OrderedDict[str, _Dir] = OrderedDict()
        self.evicted_in_use: set[_Dir] = set()
        #: Files handed to workers but not yet written: a directory may not be made there.
        self.pending_files = pending_files

    def get(self, rel: str) -> _Dir:
        """The directory DEST/rel, creating missing parts (mode 0700); ``_NotADirectory``
        if anything on the way is not a real directory."""
        if not rel:
            return self.root
        found = self.cache.get(rel)
        if found is not None:
            self.cache.move_to_end(rel)
            return found
        # Up to the nearest directory already open, then down again, one level at a time.
        missing = [rel]
        head = rel.rpartition("/")[0]
        while head and head not in self.cache:
            missing.append(head)
            head = head.rpartition("/")[0]
        found = self.get(head)
        for path in reversed(missing):
            found = self.cache[path] = _Dir(self._open(found.fd, path, path.rpartition("/")[2]))
            if len(self.cache) > OPEN_DIRS:
                self._evict()  # never the newest, which is the one in hand
        return found

    def _open(self, parent_fd: int, rel: str, name: str) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:  # ENOTDIR: a file; ELOOP (or ENOTDIR): a symlink
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                raise _NotADirectory(rel) from None
            raise
        if rel in self.pending_files:
            raise _NotADirectory(rel)
        with contextlib.suppress(FileExistsError):  # made meanwhile: the open checks it
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                raise _NotADirectory(rel) from None
            raise

    def _evict(self) -> None:
        while len(self.cache) > OPEN_DIRS:
            _rel, old = self.cache.popitem(last=False)
            old.cached = False
            if old.users:
                self.evicted_in_use.add(old)
            else:
                os.close(old.fd)

    def pin(self, handle: _Dir) -> _Dir:
        handle.users += 1
        return handle

    def release(self, handle: _Dir) -> None:
        handle.users -= 1
        if handle.users == 0 and not handle.cached and handle is not self.root:
            self.evicted_in_use.discard(handle)
            os.close(handle.fd)

    def close(self) -> None:
        """Close every descriptor (call only once no worker can use one any more)."""
        for handle in [*self.cache.values(), *self.evicted_in_use, self.root]:
            with contextlib.suppress(OSError):
                os.close(handle.fd)
        self.cache.clear()
        self.evicted_in_use.clear()


@dataclass
class _Batch:
    """Small files of one directory, written whole by one worker."""

    parent: _Dir
    entries: list[FileEntry] = field(default_factory=list)
    size: int = 0
    #: Filled in by the worker: per entry, None (restored) or ("damaged"|"refused", text);
    #: and the error that stopped the batch, if any.
    outcomes: list[tuple[str, str] | None] = field(default_factory=list)
    error: BaseException | None = None


@dataclass
class _BigFile:
    """A file too large for a batch: chunks fetched in parallel, written here in order."""

    entry: FileEntry
    parent: _Dir
    name: str
    tmp: str = ""
    fd: int = -1
    damaged: str = ""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _Restorer:
    def __init__(self, repo: Repository, dest: str, overwrite: bool) -> None:
        self.repo = repo
        self.dest = dest
        self.overwrite = overwrite
        self.store = ChunkStore(repo)
        self.manifest = repo.manifest
        self.result = RestoreResult()
        self.dir_entries: list[FileEntry] = []
        self.pending_files: set[str] = set()
        # DEST itself may be reached through a symlink: that is the user's choice.
        root_fd = os.open(dest, _DIR_FLAGS & ~os.O_NOFOLLOW)
        self.dirs = _Dirs(root_fd, self.pending_files)
        # Temp names are unique to this restore, so one can never be another entry's name
        # (nor a file left by an earlier run, which is never touched).
        self._token = os.urandom(4).hex()
        self._serial = itertools.count()
        self.stopping = False
        self.progress: Progress = NO_PROGRESS
        self.workers = fetch_workers(repo)
        # Half the workers at most write small files, so large files' chunks keep flowing.
        # With a local disk that is one batch at a time: the work is CPU-bound, and two
        # threads doing it at once mostly hand the GIL back and forth (measured: up to 2x
        # slower, with 10x the context switches).
        self.batch_slots = threading.BoundedSemaphore(max(1, self.workers // 2))

    # -- names and checks -------------------------------------------------------------

    def parent_of(self, entry: FileEntry) -> tuple[_Dir, str]:
        """(the open parent directory, the entry's name); ``UnsafePath`` if the path is
        unsafe or anything on the way under DEST is not a real directory."""
        safe_parts(entry.path)
        head, _, name = entry.path.rpartition("/")
        try:
            return self.dirs.get(head), name
        except _NotADirectory as exc:
            raise UnsafePath(f"refusing {entry.path!r}: {self.dest}/{exc.rel} is not a "
                             "directory (a symlink or file is in the way)") from None

    def temp_name(self) -> str:
        return f".{self._token}.{next(self._serial)}.enigma-restore"

    def refuse_replacing_dir(self, path: str) -> UnsafePath:
        return UnsafePath(f"refusing to replace directory {self.dest}/{path} with a "
                          "non-directory")

    def fetch(self, ref: ChunkRef, records: dict[bytes, ChunkRecord] | None = None) -> bytes:
        """A chunk's plaintext, checked; ``records`` are looked up already (a batch's)."""
        record = (self.manifest.get_chunk(ref.chunk_id) if records is None
                  else records.get(bytes(ref.chunk_id)))
        if record is None:
            raise IntegrityError(f"chunk {ref.chunk_id.hex()[:12]} is not in the manifest")
        return self.store.get(record)

    def open_temp(self, parent_fd: int) -> tuple[str, int]:
        """A new temp file in the directory, private (0600) until it is complete."""
        while True:
            tmp = self.temp_name()
            try:
                return tmp, os.open(tmp, _TMP_FLAGS, 0o600, dir_fd=parent_fd)
            except FileExistsError:
                continue  # someone else's file: leave it, take the next name

    def finish_temp(self, parent_fd: int, tmp: str, fd: int, entry: FileEntry,
                    name: str) -> None:
        """Mode and mtime on the complete temp file (closing it), then rename it into place.

        Renaming replaces a file or symlink at ``name`` (the link itself, never what it
        points to) and fails on a directory, which is refused: the same outcome as checking
        first, without the extra system call per file, and without a window in between.
        """
        try:
            os.fchmod(fd, entry.mode)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        finally:
            os.close(fd)
        try:
            os.replace(tmp, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        except IsADirectoryError:
            raise self.refuse_replacing_dir(entry.path) from None

    # -- small files: on worker threads -------------------------------------------------

    def write_batch(self, batch: _Batch) -> _Batch:
        """Restore each file of the batch; stops at the first error that must end the
        restore (disk full, ...), which the main thread raises when it gets there."""
        parent_fd = batch.parent.fd
        # A batch of one large single-chunk file is mostly decrypting, hashing and
        # copying, which release the GIL: it runs beside the others, needing no slot.
        slot = self.batch_slots if batch.size <= BATCH_BYTES else contextlib.nullcontext()
        with slot:
            try:
                records = self.manifest.get_chunks(
                    ref.chunk_id for entry in batch.entries for ref in entry.chunks)
            except BaseException as exc:  # handed to the main thread, like a write's
                batch.error = exc
                return batch
            for entry in batch.entries:
                if self.stopping:  # the restore is ending: leave the rest unwritten
                    break
                try:
                    batch.outcomes.append(self.write_small(parent_fd, entry, records))
                except BaseException as exc:  # handed to the main thread, in order
                    batch.error = exc
                    break
        return batch

    def write_small(self, parent_fd: int, entry: FileEntry,
                    records: dict[bytes, ChunkRecord]) -> tuple[str, str] | None:
        """Fetch and check every chunk first, so a damaged file is never even created."""
        try:
            pieces = [self.fetch(ref, records) for ref in entry.chunks]
        except IntegrityError as exc:
            return "damaged", f"{entry.path}: {exc}"
        name = entry.path.rpartition("/")[2]
        tmp, fd = self.open_temp(parent_fd)
        try:
            try:
                for piece in pieces:
                    _write_all(fd, piece)
                del pieces
            except BaseException:
                os.close(fd)
                raise
            self.finish_temp(parent_fd, tmp, fd, entry, name)
        except UnsafePath as exc:
            _unlink(tmp, parent_fd)
            return "refused", str(exc)
        except BaseException:
            _unlink(tmp, parent_fd)
            raise
        return None

    # -- large files: fetched in parallel, written in order here -----------------------

    def begin_big(self, big: _BigFile) -> None:
        big.tmp, big.fd = self.open_temp(big.parent.fd)

    def end_big(self, big: _BigFile) -> None:
        """Give a complete file its mode, mtime and name; drop a damaged one."""
        fd, big.fd = big.fd, -1
        if big.damaged:
            os.close(fd)
            _unlink(big.tmp, big.parent.fd)
            self.result.damaged.append(f"{big.entry.path}: {big.damaged}")
            self.progress.error(big.entry.path, big.damaged)
            return
        try:
            self.finish_temp(big.parent.fd, big.tmp, fd, big.entry, big.name)
        except UnsafePath as exc:
            _unlink(big.tmp, big.parent.fd)
            self.result.refused.append(str(exc))
            self.progress.error(big.entry.path, str(exc))
            return
        except BaseException:
            _unlink(big.tmp, big.parent.fd)
            raise
        self.result.files += 1
        self.result.bytes += big.entry.size
        self.progress.advance(files=1)

    def abandon(self, big: _BigFile) -> None:
        if big.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(big.fd)
            big.fd = -1
            _unlink(big.tmp, big.parent.fd)

    # -- directories and symlinks: on the main thread -----------------------------------

    def directory(self, entry: FileEntry) -> None:
        parent, name = self.parent_of(entry)
        try:
            os.mkdir(name, 0o700, dir_fd=parent.fd)
        except FileExistsError:
            st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                if not self.overwrite:
                    raise EnigmaError(f"{self.dest}/{entry.path} exists; use --overwrite to "
                                      "replace it") from None
                os.unlink(name, dir_fd=parent.fd)
                os.mkdir(name, 0o700, dir_fd=parent.fd)
        self.dir_entries.append(entry)
        self.result.dirs += 1

    def symlink(self, entry: FileEntry) -> None:
        """A symlink replaces a file or symlink already there (with --overwrite), never
        a directory, and is never followed."""
        parent, name = self.parent_of(entry)
        try:
            os.symlink(entry.target or "", name, dir_fd=parent.fd)
        except FileExistsError:
            st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise self.refuse_replacing_dir(entry.path) from None
            if not self.overwrite:
                raise EnigmaError(f"{self.dest}/{entry.path} exists; use --overwrite to "
                                  "replace it") from None
            os.unlink(name, dir_fd=parent.fd)
            os.symlink(entry.target or "", name, dir_fd=parent.fd)
        os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=parent.fd,
                 follow_symlinks=False)
        self.result.symlinks += 1

    def finish_dirs(self) -> None:
        """Modes and mtimes of directories last (deepest first): writing inside changes them."""
        for entry in sorted(self.dir_entries, key=lambda e: e.path.count("/"), reverse=True):
            parent, name = self.parent_of(entry)
            times = (entry.mtime_ns, entry.mtime_ns)
            try:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=parent.fd)
            except PermissionError:  # an unreadable directory that was already in DEST
                try:
                    os.chmod(name, entry.mode, dir_fd=parent.fd, follow_symlinks=False)
                except (NotImplementedError, OSError) as exc:
                    if isinstance(exc, OSError) and exc.errno not in (errno.ENOTSUP,
                                                                      errno.EOPNOTSUPP):
                        raise
                    os.chmod(name, entry.mode, dir_fd=parent.fd)  # no O_PATH trick here
                os.utime(name, ns=times, dir_fd=parent.fd, follow_symlinks=False)
                continue
            try:
                os.fchmod(fd, entry.mode)
                os.utime(fd, ns=times)
            finally:
                os.close(fd)


def fetch_workers(repo: Repository) -> int:
    """Chunk fetches at once: what the providers say they take (a cloud 8, a local disk
    2, see ``StorageProvider.upload_concurrency``), else two per core."""
    hints = [getattr(p, "upload_concurrency", 0) for p in repo.providers.values()]
    return max([h for h in hints if isinstance(h, int) and h > 0], default=0) or max(
        4, 2 * cpu_count())


def _unlink(name: str, dir_fd: int) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)


def list_entries(repo: Repository, backup_id: str, prefix: str | None,
                 glob: str | None) -> Iterator[FileEntry]:
    backup = repo.manifest.get_backup(backup_id)
    entries = repo.manifest.iter_files(backup.id, prefix.strip("/") if prefix else None)
    return select(entries, glob) if glob else entries


#: What the pipeline carries: a batch of small files, or a large file's begin, one
#: chunk, or end.
_Task = tuple[str, "_Batch | _BigFile", "ChunkRef | None"]


def _start_progress(repo: Repository, backup: BackupRecord, prefix: str | None,
                   glob: str | None, progress: Progress) -> TotalsScanner:
    """Begin restore's progress. A whole finished backup's totals are in its stats; a
    selection (or a backup without stats) is counted on a thread beside the restore."""
    stats = backup.stats
    whole = (not prefix and not glob and backup.status in ("complete", "partial")
             and isinstance(stats.get("files"), int)
             and isinstance(stats.get("bytes_total"), int))
    progress.begin("restore", files_total=stats["files"] if whole else None,
                   bytes_total=stats["bytes_total"] if whole else None)

    def sizes() -> Iterator[int]:
        return (e.size for e in list_entries(repo, backup.id, prefix, glob) if e.type == "file")

    scanner = TotalsScanner(progress, sizes)
    return scanner if whole else scanner.start()


def run_restore(repo: Repository, backup_id: str, dest: str | os.PathLike[str], *,
                prefix: str | None = None, glob: str | None = None,
                overwrite: bool = False, progress: Progress = NO_PROGRESS) -> RestoreResult:
    """Restore a backup (or the part selected by ``prefix``/``glob``) into ``dest``.

    Directories are made as entries arrive (in path order). Small files are fetched,
    authenticated and written by worker threads, a batch per directory at a time; large
    files' chunks are fetched in parallel and written in order. Everything in flight is
    bounded by a byte budget. Symlinks come last, then directory modes and mtimes.
    """
    backup = repo.manifest.get_backup(backup_id)
    target = os.path.abspath(dest)
    if is_nonempty_dir(target) and not overwrite:
        raise EnigmaError(f"destination {target} is not empty; use --overwrite to restore "
                          "into it anyway")
    os.makedirs(target, exist_ok=True)
    restorer = _Restorer(repo, target, overwrite)
    restorer.progress = progress
    scanner = _start_progress(repo, backup, prefix, glob, progress)
    try:
        return _restore(restorer, backup.id, prefix, glob)
    finally:
        scanner.stop()
        progress.end()
        restorer.dirs.close()


def _restore(restorer: _Restorer, backup_id: str, prefix: str | None,
             glob: str | None) -> RestoreResult:
    result, dirs, pending = restorer.result, restorer.dirs, restorer.pending_files
    progress = restorer.progress
    symlinks: list[FileEntry] = []
    matched = 0

    def tasks() -> Iterator[_Task]:
        nonlocal matched
        batch: _Batch | None = None
        for entry in list_entries(restorer.repo, backup_id, prefix, glob):
            matched += 1
            if entry.type == "symlink":
                symlinks.append(entry)  # last, so no file is written through one
                continue
            if entry.type not in ("file", "dir"):
                continue
            try:
                if entry.type == "dir":
                    restorer.directory(entry)
                    continue
                parent, name = restorer.parent_of(entry)
            except UnsafePath as exc:
                result.refused.append(str(exc))
                progress.error(entry.path, str(exc))
                continue
            if len(entry.chunks) <= 1 or entry.size <= SMALL_FILE:
                if batch is not None and (batch.parent is not parent
                                          or len(batch.entries) >= BATCH_FILES
                                          or batch.size + entry.size > BATCH_BYTES):
                    yield "batch", batch, None
                    batch = None
                if batch is None:
                    batch = _Batch(dirs.pin(parent))
                batch.entries.append(entry)
                batch.size += entry.size
                pending.add(entry.path)
                continue
            if batch is not None:
                yield "batch", batch, None
                batch = None
            big = _BigFile(entry, dirs.pin(parent), name)
            pending.add(entry.path)
            yield "begin", big, None
            for ref in entry.chunks:
                yield "chunk", big, ref
            yield "end", big, None
        if batch is not None:
            yield "batch", batch, None

    def work(task: _Task) -> object:
        kind, item, ref = task
        if kind == "batch":
            return restorer.write_batch(item)  # type: ignore[arg-type]
        if kind == "chunk":
            return restorer.fetch(ref)  # type: ignore[arg-type]
        return None

    def size(task: _Task) -> int:
        kind, item, ref = task
        if kind == "batch":
            return max(item.size, MIN_BATCH_CHARGE)  # type: ignore[union-attr]
        return ref.length if ref is not None else 0

    current: _BigFile | None = None
    pipeline = ordered_map(work, tasks(), size=size, workers=restorer.workers)
    try:
        for (kind, item, _ref), future in pipeline:
            if kind == "batch":
                batch: _Batch = future.result()  # type: ignore[assignment]
                _count(result, batch, progress)
                for entry in batch.entries:
                    pending.discard(entry.path)
                dirs.release(batch.parent)
                if batch.error is not None:
                    raise batch.error
                continue
            big: _BigFile = item  # type: ignore[assignment]
            if kind == "begin":
                current = big
                progress.current_file(big.entry.path)
                restorer.begin_big(big)
            elif kind == "chunk":
                if big.damaged:
                    continue
                try:
                    data: bytes = future.result()  # type: ignore[assignment]
                    _write_all(big.fd, data)
                except IntegrityError as exc:
                    big.damaged = str(exc)
                else:
                    progress.advance(bytes=len(data))
            else:
                current = None
                pending.discard(big.entry.path)
                restorer.end_big(big)
                dirs.release(big.parent)
    except OSError as exc:
        _stop(pipeline, current, restorer)
        if exc.errno == errno.ENOSPC:
            raise EnigmaError(f"restore stopped: no space left on device under "
                              f"{restorer.dest}; {result.files} files restored") from None
        raise
    except BaseException:
        _stop(pipeline, current, restorer)
        raise
    if matched == 0 and (prefix or glob):
        raise NotFoundError(f"nothing in backup {backup_id} matches "
                            + " and ".join(x for x in (prefix and f"--path {prefix}",
                                                       glob and f"--glob {glob}") if x))
    for entry in symlinks:
        try:
            restorer.symlink(entry)
        except UnsafePath as exc:
            result.refused.append(str(exc))
            progress.error(entry.path, str(exc))
    restorer.finish_dirs()
    return result


def _count(result: RestoreResult, batch: _Batch, progress: Progress) -> None:
    files = size = 0
    for entry, outcome in zip(batch.entries, batch.outcomes, strict=False):
        if outcome is None:
            files += 1
            size += entry.size
            continue
        if outcome[0] == "damaged":
            result.damaged.append(outcome[1])
        else:
            result.refused.append(outcome[1])
        progress.error(entry.path, outcome[1].removeprefix(f"{entry.path}: "))
    result.files += files
    result.bytes += size
    if batch.entries:
        progress.current_file(batch.entries[-1].path)
    progress.advance(files=files, bytes=size)


def _stop(pipeline: Iterator[object], current: _BigFile | None, restorer: _Restorer) -> None:
    """End the pipeline (waiting for running workers, which remove their own temp files)
    and drop the large file being written, if any."""
    restorer.stopping = True
    close = getattr(pipeline, "close", None)
    if close is not None:
        close()
    if current is not None:
        restorer.abandon(current)
