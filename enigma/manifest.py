"""The SQLite manifest: what was backed up, which chunks exist and where they live.

Reads are plain methods. Every mutation is one of the named operations listed in
``MUTATING_OPERATIONS``, takes plain data decided by the caller (ids, timestamps) and runs
in one transaction, so the same call applied on another node (Raft) gives the same state.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

from enigma.errors import ConfigError, EnigmaError, IntegrityError, NotFoundError

_T = TypeVar("_T")


@dataclass
class ChunkRecord:
    """A stored chunk: its keyed id, sizes, how it was sealed and where it lives."""

    id: bytes
    size: int
    stored_size: int
    compression: str
    key_id: int
    providers: tuple[str, ...]
    refcount: int = 0
    created_at: float = 0.0
    #: The pack object holding the chunk on every provider of ``providers`` (at ``offset``,
    #: ``stored_size`` bytes long), or None for a chunk stored as an object of its own.
    pack: bytes | None = None
    offset: int = 0


@dataclass
class ChunkRef:
    """One chunk of a file or object, at ``offset`` in the plaintext."""

    chunk_id: bytes
    offset: int
    length: int


@dataclass
class FileEntry:
    """A file, directory or symlink inside a backup; ``path`` is relative, '/'-separated."""

    path: str
    type: str  # "file" | "dir" | "symlink"
    size: int = 0
    mode: int = 0
    mtime_ns: int = 0
    target: str | None = None
    uid: int = 0
    gid: int = 0
    inode: int = 0
    ctime_ns: int = 0
    chunks: list[ChunkRef] = field(default_factory=list)
    #: The recorded chunk list this entry shares (``Manifest.file_cache`` gives it): an
    #: unchanged file in a changed directory points at its earlier row's list instead of
    #: copying it (``chunks`` stays empty on the way in). None: ``chunks`` is the list.
    chunk_list: int | None = None


@dataclass
class BackupRecord:
    """One backup run and its outcome."""

    id: str
    created_at: float
    sources: list[str]
    hostname: str
    status: str = "running"  # running | complete | partial | failed
    finished_at: float | None = None
    params: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)


@dataclass
class LogEntry:
    """One line of a backup's audit trail."""

    at: float
    level: str  # info | warning | error
    event: str  # e.g. "skipped", "unreadable", "vanished", "finished"
    path: str | None = None
    message: str = ""


@dataclass
class BucketRecord:
    """A gateway bucket."""

    name: str
    owner: str
    created_at: float
    region: str = ""


@dataclass
class ObjectRecord:
    """A gateway object: its metadata and chunk list."""

    bucket: str
    key: str
    size: int
    etag: str
    created_at: float
    content_type: str = ""
    metadata: dict = field(default_factory=dict)
    chunks: list[ChunkRef] = field(default_factory=list)


# --------------------------------------------------------------------------------------
# Schema and migrations
# --------------------------------------------------------------------------------------

#: Written into the SQLite header so a random SQLite file is never mistaken for a manifest.
APPLICATION_ID = 0x456E6967  # "Enig"

_Migration = Callable[[sqlite3.Connection], None]


def _sql(*statements: str) -> _Migration:
    """A migration made of plain SQL statements, run one by one inside the caller's txn.

    ``executescript`` is avoided on purpose: it may COMMIT on its own, which would break
    the all-or-nothing upgrade.
    """

    def run(conn: sqlite3.Connection) -> None:
        for statement in statements:
            conn.execute(statement)

    return run


_MIGRATION_1 = _sql(
    f"PRAGMA application_id = {APPLICATION_ID}",
    """CREATE TABLE backups (
        id          TEXT PRIMARY KEY,
        created_at  REAL NOT NULL,
        finished_at REAL,
        status      TEXT NOT NULL,
        sources     TEXT NOT NULL,   -- JSON list
        hostname    TEXT NOT NULL,
        params      TEXT NOT NULL,   -- JSON object
        stats       TEXT NOT NULL    -- JSON object
    )""",
    "CREATE INDEX backups_created ON backups(created_at)",
    """CREATE TABLE files (
        id        INTEGER PRIMARY KEY,
        backup_id TEXT NOT NULL REFERENCES backups(id) ON DELETE CASCADE,
        path      TEXT NOT NULL,
        type      TEXT NOT NULL,
        size      INTEGER NOT NULL,
        mode      INTEGER NOT NULL,
        mtime_ns  INTEGER NOT NULL,
        target    TEXT,
        uid       INTEGER NOT NULL,
        gid       INTEGER NOT NULL,
        inode     INTEGER NOT NULL,
        ctime_ns  INTEGER NOT NULL,
        UNIQUE (backup_id, path)
    )""",
    """CREATE TABLE chunks (
        id          BLOB PRIMARY KEY,
        size        INTEGER NOT NULL,
        stored_size INTEGER NOT NULL,
        compression TEXT NOT NULL,
        key_id      INTEGER NOT NULL,
        refcount    INTEGER NOT NULL DEFAULT 0,
        created_at  REAL NOT NULL
    ) WITHOUT ROWID""",
    # gc scans for refcount = 0; a partial index keeps that O(garbage), not O(repository).
    "CREATE INDEX chunks_unreferenced ON chunks(id) WHERE refcount = 0",
    """CREATE TABLE chunk_locations (
        chunk_id BLOB NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,
        provider TEXT NOT NULL,
        PRIMARY KEY (chunk_id, provider)
    ) WITHOUT ROWID""",
    "CREATE INDEX chunk_locations_provider ON chunk_locations(provider)",
    # chunk_id references chunks without a cascade: SQLite itself refuses to drop a chunk row
    # that a file still points at, a second guard behind the refcount.
    """CREATE TABLE file_chunks (
        file_id  INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
        seq      INTEGER NOT NULL,
        chunk_id BLOB NOT NULL REFERENCES chunks(id),
        "offset" INTEGER NOT NULL,
        length   INTEGER NOT NULL,
        PRIMARY KEY (file_id, seq)
    ) WITHOUT ROWID""",
    "CREATE INDEX file_chunks_chunk ON file_chunks(chunk_id)",
    # No foreign key on backup_id: the audit trail outlives the backup it describes.
    """CREATE TABLE backup_log (
        id        INTEGER PRIMARY KEY,
        backup_id TEXT NOT NULL,
        at        REAL NOT NULL,
        level     TEXT NOT NULL,
        event     TEXT NOT NULL,
        path      TEXT,
        message   TEXT NOT NULL
    )""",
    "CREATE INDEX backup_log_backup ON backup_log(backup_id, id)",
    """CREATE TABLE buckets (
        name       TEXT PRIMARY KEY,
        owner      TEXT NOT NULL,
        created_at REAL NOT NULL,
        region     TEXT NOT NULL
    )""",
    # Keys use the default BINARY collation: memcmp on UTF-8, i.e. S3's listing order.
    """CREATE TABLE objects (
        bucket       TEXT NOT NULL REFERENCES buckets(name),
        key          TEXT NOT NULL,
        size         INTEGER NOT NULL,
        etag         TEXT NOT NULL,
        created_at   REAL NOT NULL,
        content_type TEXT NOT NULL,
        metadata     TEXT NOT NULL,  -- JSON object
        PRIMARY KEY (bucket, key)
    ) WITHOUT ROWID""",
    """CREATE TABLE object_chunks (
        bucket   TEXT NOT NULL,
        key      TEXT NOT NULL,
        seq      INTEGER NOT NULL,
        chunk_id BLOB NOT NULL REFERENCES chunks(id),
        "offset" INTEGER NOT NULL,
        length   INTEGER NOT NULL,
        PRIMARY KEY (bucket, key, seq),
        FOREIGN KEY (bucket, key) REFERENCES objects(bucket, key) ON DELETE CASCADE
    ) WITHOUT ROWID""",
    "CREATE INDEX object_chunks_chunk ON object_chunks(chunk_id)",
)

# Version 2: small chunks live in pack objects (``enigma.packs``). A chunk's pack is the
# same on every provider it is on; gc finds the packs nothing points at through the index.
_MIGRATION_2 = _sql(
    "ALTER TABLE chunks ADD COLUMN pack BLOB",
    "ALTER TABLE chunks ADD COLUMN pack_offset INTEGER NOT NULL DEFAULT 0",
    "CREATE INDEX chunks_pack ON chunks(pack) WHERE pack IS NOT NULL",
)


def parent_path(path: str) -> str:
    """The stored path of the directory holding ``path`` ("" for a top-level entry)."""
    return path.rpartition("/")[0]


def entry_name(path: str) -> str:
    """What ``files.name`` holds for ``path``: the part after its parent and "/" (the
    whole path at the top, so even a hostile "/x" reads back as it was written)."""
    parent = parent_path(path)
    return path[len(parent) + 1:] if parent else path


def path_base(dir_path: str) -> str:
    """What goes before an entry's name in a directory version's full paths."""
    return dir_path + "/" if dir_path else ""


def _migration_3(conn: sqlite3.Connection) -> None:
    """Version 3: a backup's entries live in directory versions (``dirs``) that later
    backups share when nothing in the directory changed (restic's trees, in SQL): a
    no-change re-backup writes a row per directory, not per file.

    Each existing backup's entries become its own directory versions. ``files`` and
    ``file_chunks`` are rebuilt (SQLite cannot change a column's foreign key in place):
    renamed away first, which also repoints ``file_chunks``' reference, so dropping the
    old tables cascades into nothing.
    """
    conn.create_function("enigma_parent", 1, parent_path, deterministic=True)
    conn.create_function("enigma_name", 1, entry_name, deterministic=True)
    for statement in (
        "ALTER TABLE file_chunks RENAME TO file_chunks_v2",
        "ALTER TABLE files RENAME TO files_v2",
        # origin: the backup that recorded the version (no foreign key: the version
        # outlives it while later backups share it). path: its entries' parent.
        """CREATE TABLE dirs (
            id     INTEGER PRIMARY KEY,
            origin TEXT NOT NULL,
            path   TEXT NOT NULL,
            UNIQUE (origin, path)
        )""",
        """CREATE TABLE backup_dirs (
            backup_id TEXT NOT NULL REFERENCES backups(id) ON DELETE CASCADE,
            dir_id    INTEGER NOT NULL REFERENCES dirs(id),
            PRIMARY KEY (backup_id, dir_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX backup_dirs_dir ON backup_dirs(dir_id)",
        # name: the path after the version's path and "/" (``entry_name``)
        """CREATE TABLE files (
            id       INTEGER PRIMARY KEY,
            dir_id   INTEGER NOT NULL REFERENCES dirs(id) ON DELETE CASCADE,
            name     TEXT NOT NULL,
            type     TEXT NOT NULL,
            size     INTEGER NOT NULL,
            mode     INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            target   TEXT,
            uid      INTEGER NOT NULL,
            gid      INTEGER NOT NULL,
            inode    INTEGER NOT NULL,
            ctime_ns INTEGER NOT NULL,
            UNIQUE (dir_id, name)
        )""",
        """CREATE TABLE file_chunks (
            file_id  INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
            seq      INTEGER NOT NULL,
            chunk_id BLOB NOT NULL REFERENCES chunks(id),
            "offset" INTEGER NOT NULL,
            length   INTEGER NOT NULL,
            PRIMARY KEY (file_id, seq)
        ) WITHOUT ROWID""",
        "INSERT INTO dirs (origin, path) SELECT DISTINCT backup_id, enigma_parent(path)"
        " FROM files_v2 ORDER BY 1, 2",
        "INSERT INTO backup_dirs (backup_id, dir_id) SELECT origin, id FROM dirs",
        "INSERT INTO files SELECT f.id, d.id, enigma_name(f.path), f.type, f.size, f.mode,"
        " f.mtime_ns,"
        " f.target, f.uid, f.gid, f.inode, f.ctime_ns FROM files_v2 f"
        " JOIN dirs d ON d.origin = f.backup_id AND d.path = enigma_parent(f.path)",
        "INSERT INTO file_chunks SELECT * FROM file_chunks_v2",
        "DROP TABLE file_chunks_v2",
        "DROP TABLE files_v2",
        "CREATE INDEX file_chunks_chunk ON file_chunks(chunk_id)",
    ):
        conn.execute(statement)


#: Version 4: a smaller manifest.
#:
#: - Packs are numbered (``packs``): ``chunks.pack`` holds a ``packs.id`` instead of the
#:   pack's 32-byte id, in the row and again in its ``chunks_pack`` index (the column keeps
#:   its declared type BLOB, which SQLite cannot change in place; BLOB affinity stores the
#:   integer as it is). A pack's row goes when no chunk points into it.
#: - No index of chunk locations by provider: no query looks one provider's chunks up
#:   (the per-provider figures scan every location either way), and it held each chunk
#:   id once more.
#: - Chunk lists are shared: ``file_chunks`` is keyed by a list id (the id of the entry
#:   that first recorded the list) and ``files.chunk_list`` names the list an entry uses,
#:   so an unchanged file in a changed directory shares its earlier row's list instead of
#:   copying it. A list has no foreign key to ``files``: it lives while any entry names
#:   it, and gc's ``drop_unlinked_dirs`` releases the lists nothing names any more. A
#:   chunk's refcount counts the lists that hold it.
#:
#: Together 2.7 of the 11.4 MB of a scale-1 benchmark manifest after one backup, and
#: after a 5 % mutation half of the list rows it used to write.
_MIGRATION_4 = _sql(
    "CREATE TABLE packs (id INTEGER PRIMARY KEY, name BLOB NOT NULL UNIQUE)",
    "INSERT INTO packs (name) SELECT DISTINCT pack FROM chunks WHERE pack IS NOT NULL"
    " ORDER BY pack",
    "UPDATE chunks SET pack = (SELECT id FROM packs WHERE name = chunks.pack)"
    " WHERE pack IS NOT NULL",
    "DROP INDEX IF EXISTS chunk_locations_provider",
    "ALTER TABLE files ADD COLUMN chunk_list INTEGER",
    "UPDATE files SET chunk_list = id"
    " WHERE EXISTS (SELECT 1 FROM file_chunks fc WHERE fc.file_id = files.id)",
    """CREATE TABLE chunk_lists (
        list_id  INTEGER NOT NULL,
        seq      INTEGER NOT NULL,
        chunk_id BLOB NOT NULL REFERENCES chunks(id),
        "offset" INTEGER NOT NULL,
        length   INTEGER NOT NULL,
        PRIMARY KEY (list_id, seq)
    ) WITHOUT ROWID""",
    "INSERT INTO chunk_lists SELECT * FROM file_chunks",
    "DROP TABLE file_chunks",
    "ALTER TABLE chunk_lists RENAME TO file_chunks",
    "CREATE INDEX file_chunks_chunk ON file_chunks(chunk_id)",
)

#: Applied in order; migration ``i`` (0-based) brings the schema to version ``i + 1``.
#: Append only: never edit a migration that has shipped.
MIGRATIONS: tuple[_Migration, ...] = (_MIGRATION_1, _MIGRATION_2, _migration_3, _MIGRATION_4)
SCHEMA_VERSION = len(MIGRATIONS)

#: Directory versions no backup links: left by ``delete_backup`` for gc to drop.
_UNLINKED_DIRS = ("SELECT d.id FROM dirs d WHERE NOT EXISTS"
                  " (SELECT 1 FROM backup_dirs bd WHERE bd.dir_id = d.id)")

#: Bound on ``?`` parameters per ``IN (...)`` list: far below SQLite's limit, and keeps
#: statements small enough to be cheap to prepare.
_BATCH = 500

_CHUNK_COLUMNS = (
    "c.id, c.size, c.stored_size, c.compression, c.key_id, c.refcount, c.created_at,"
    " (SELECT p.name FROM packs p WHERE p.id = c.pack), c.pack_offset"
)
#: A pack's number from its id (a ``?`` parameter); NULL for none or an unknown pack.
_PACK_NUMBER = "(SELECT id FROM packs WHERE name = ?)"
#: Packs no chunk points into any more (gc emptied them, repair took chunks out).
_EMPTY_PACKS = ("DELETE FROM packs WHERE NOT EXISTS"
                " (SELECT 1 FROM chunks INDEXED BY chunks_pack WHERE chunks.pack = packs.id)")
#: An entry's columns, its full path made from a ``?`` parameter (``path_base`` of its
#: version) and its name.
_FILE_COLUMNS = (
    "f.id, ? || f.name, f.type, f.size, f.mode, f.mtime_ns, f.target, f.uid, f.gid, f.inode,"
    " f.ctime_ns"
)
#: An entry's full path where its version ``d`` is joined.
_JOINED_PATH = "(CASE WHEN d.path = '' THEN f.name ELSE d.path || '/' || f.name END)"
_BACKUP_COLUMNS = "id, created_at, finished_at, status, sources, hostname, params, stats"
_OBJECT_COLUMNS = "bucket, key, size, etag, created_at, content_type, metadata"


def _dumps(value: object) -> str:
    """Canonical JSON, so the same record gives the same bytes on every Raft node."""
    return json.dumps(value, sort_keys=True)


def _batches(items: Iterable[_T], size: int = _BATCH) -> Iterator[list[_T]]:
    batch: list[_T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _prefix_upper_bound(prefix: str) -> str | None:
    """Smallest string greater than every string starting with ``prefix``.

    UTF-8 byte order equals code point order, so bumping the last code point works; None
    means "no upper bound" (prefix made only of U+10FFFF).
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop()) + 1
        if last == 0xD800:  # surrogates cannot be encoded in UTF-8: skip over them
            last = 0xE000
        if last <= 0x10FFFF:
            return "".join(chars) + chr(last)
    return None


def _chunk_from_rows(rows: list[sqlite3.Row | tuple]) -> ChunkRecord:
    first = rows[0]
    providers = tuple(sorted(r[9] for r in rows if r[9] is not None))
    return ChunkRecord(
        id=bytes(first[0]),
        size=first[1],
        stored_size=first[2],
        compression=first[3],
        key_id=first[4],
        providers=providers,
        refcount=first[5],
        created_at=first[6],
        pack=None if first[7] is None else bytes(first[7]),
        offset=first[8],
    )


def _group_chunks(rows: Iterable[tuple]) -> Iterator[ChunkRecord]:
    """Fold consecutive (chunk columns..., provider) rows of one chunk into a record."""
    current: list[tuple] = []
    for row in rows:
        if current and current[0][0] != row[0]:
            yield _chunk_from_rows(current)
            current = []
        current.append(row)
    if current:
        yield _chunk_from_rows(current)


def _backup_from_row(row: tuple) -> BackupRecord:
    return BackupRecord(
        id=row[0],
        created_at=row[1],
        finished_at=row[2],
        status=row[3],
        sources=json.loads(row[4]),
        hostname=row[5],
        params=json.loads(row[6]),
        stats=json.loads(row[7]),
    )


def _file_from_row(row: tuple) -> FileEntry:
    return FileEntry(
        path=row[1],
        type=row[2],
        size=row[3],
        mode=row[4],
        mtime_ns=row[5],
        target=row[6],
        uid=row[7],
        gid=row[8],
        inode=row[9],
        ctime_ns=row[10],
    )


def _files_from_rows(rows: Iterable[tuple]) -> Iterator[FileEntry]:
    """Entries from rows of ``_FILE_COLUMNS`` + (chunk id, offset, length), one row per
    chunk (a LEFT JOIN: NULLs for an entry without chunks), grouped by file id."""
    current: FileEntry | None = None
    current_id = None
    for row in rows:
        if row[0] != current_id:
            if current is not None:
                yield current
            current, current_id = _file_from_row(row), row[0]
        if row[11] is not None:
            current.chunks.append(ChunkRef(bytes(row[11]), row[12], row[13]))
    if current is not None:
        yield current


def _object_from_row(row: tuple) -> ObjectRecord:
    return ObjectRecord(
        bucket=row[0],
        key=row[1],
        size=row[2],
        etag=row[3],
        created_at=row[4],
        content_type=row[5],
        metadata=json.loads(row[6]),
    )


def _hex_list(ids: Iterable[bytes], limit: int = 3) -> str:
    ids = sorted(ids)
    shown = ", ".join(i.hex() for i in ids[:limit])
    return shown + (f" (+{len(ids) - limit} more)" if len(ids) > limit else "")


# --------------------------------------------------------------------------------------
# The manifest
# --------------------------------------------------------------------------------------


class Manifest:
    """The repository's SQLite manifest.

    One instance may be shared by several threads: point reads and every mutation run on
    one connection under an ``RLock`` (a mutation holds it for its whole transaction), while
    the streaming iterators (``iter_files``, ``iter_chunks``, ``backup_chunk_ids``) each open
    their own short-lived read connection. WAL gives those a consistent snapshot, they never
    block writers, and they never hold the lock across a ``yield``.
    """

    #: The only methods that change state. Each takes plain data decided by the caller and
    #: runs in one transaction, so replaying the same calls elsewhere (Raft) gives the same
    #: database. ``apply`` dispatches to these names and nothing else.
    MUTATING_OPERATIONS: tuple[str, ...] = (
        "add_chunks",
        "begin_backup",
        "add_files",
        "link_dirs",
        "log",
        "finish_backup",
        "backup_progress",
        "delete_backup",
        "drop_unlinked_dirs",
        "delete_chunks",
        "set_chunk_providers",
        "move_chunks",
        "create_bucket",
        "delete_bucket",
        "put_object",
        "delete_object",
        "apply_batch",
    )

    #: True for a copy that a cluster shares (Raft): commands that assume one machine
    #: writes the repository (gc) refuse it.
    replicated: bool = False

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.RLock()
        self._closed = False
        self._batching = False  # set only by apply_batch, which holds the lock
        if not os.path.exists(self.path):
            # Create it ourselves so it is born 0600: it lists every file name that was
            # backed up. SQLite gives the -wal and -shm files the same mode.
            # FileExistsError: another process won the race and created it the same way.
            with suppress(FileExistsError):
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        try:
            self._conn = self._connect()
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"manifest {self.path} is not a SQLite database or cannot be opened: {exc}"
            ) from exc
        try:
            self._migrate()
        except BaseException:
            self._conn.close()
            self._closed = True
            raise

    # -- connection plumbing -----------------------------------------------------------

    def _connect(self, *, readonly: bool = False) -> sqlite3.Connection:
        # isolation_level=None: the module never opens transactions behind our back; each
        # mutation says BEGIN IMMEDIATE / COMMIT itself.
        conn = sqlite3.connect(
            self.path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA foreign_keys = ON")
            if readonly:
                conn.execute("PRAGMA query_only = ON")
            else:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise sqlite3.DatabaseError(f"cannot switch to WAL mode (got {mode})")
                # FULL rather than NORMAL: in WAL, NORMAL may lose the last commits on power
                # loss. That is harmless for additions but not for gc, which deletes chunk
                # rows and *then* deletes the objects; a rolled-back delete_chunks would
                # leave the manifest pointing at chunks that no longer exist. Writes are
                # batched, so the one extra fsync per transaction is cheap.
                conn.execute("PRAGMA synchronous = FULL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self) -> None:
        conn = self._conn
        try:
            version, app_id = self._header(conn)
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"manifest {self.path} is not a SQLite database: {exc}") from exc
        self._check_version(version, app_id)
        if version == SCHEMA_VERSION:
            return
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Re-read under the write lock: another process may have migrated meanwhile.
                version, app_id = self._header(conn)
                self._check_version(version, app_id)
                if version == 0:
                    n_tables = conn.execute(
                        "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
                    ).fetchone()[0]
                    if n_tables:
                        raise ConfigError(
                            f"manifest {self.path} is a SQLite database but not an enigma manifest"
                        )
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    MIGRATIONS[target - 1](conn)
                    conn.execute(f"PRAGMA user_version = {target}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            if 0 < version < 3:
                # Migration 3 rebuilt the file tables: give the old pages back to the disk
                # (the manifest is also copied into every snapshot).
                conn.execute("VACUUM")

    @staticmethod
    def _header(conn: sqlite3.Connection) -> tuple[int, int]:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        return version, app_id

    def _check_version(self, version: int, app_id: int) -> None:
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"manifest {self.path} has schema version {version}, newer than this enigma "
                f"supports ({SCHEMA_VERSION}); upgrade enigma"
            )
        if version > 0 and app_id != APPLICATION_ID:
            raise ConfigError(f"{self.path} is a SQLite database but not an enigma manifest")

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"manifest {self.path} is closed")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One immediate transaction under the lock; any exception rolls it all back.

        Inside ``apply_batch`` (same thread: it holds the lock) an operation gets a
        savepoint of the batch's transaction instead.
        """
        with self._lock:
            self._check_open()
            conn = self._conn
            if self._batching:
                with self._savepoint(conn):
                    yield conn
                return
            if conn.in_transaction:
                raise RuntimeError("manifest operations cannot be nested")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise IntegrityError(f"manifest constraint failed: {exc}") from exc
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @staticmethod
    @contextmanager
    def _savepoint(conn: sqlite3.Connection) -> Iterator[None]:
        """One operation of a batch: undone alone when it fails."""
        conn.execute("SAVEPOINT operation")
        try:
            yield
        except BaseException as exc:
            conn.execute("ROLLBACK TO operation")
            conn.execute("RELEASE operation")
            if isinstance(exc, sqlite3.IntegrityError):
                raise IntegrityError(f"manifest constraint failed: {exc}") from exc
            raise
        conn.execute("RELEASE operation")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._check_open()
            yield self._conn

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """A private read-only connection for a streaming query (see the class docstring)."""
        self._check_open()
        conn = self._connect(readonly=True)
        try:
            yield conn
        finally:
            conn.close()

    def close(self) -> None:
        """Close the connection; further calls raise. Safe to call twice."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Manifest({self.path!r})"

    def schema_version(self) -> int:
        """The ``PRAGMA user_version`` of the open database."""
        with self._read() as conn:
            return conn.execute("PRAGMA user_version").fetchone()[0]

    def pages(self) -> int:
        """The database's size in pages: ``compact`` is worth it after it grew a lot."""
        with self._read() as conn:
            return conn.execute("PRAGMA page_count").fetchone()[0]

    def compact(self) -> None:
        """Rewrite the database with full pages (VACUUM). Local and physical, never
        replicated: B-trees keyed by random chunk ids fill their pages to about 70 %."""
        with self._lock:
            self._check_open()
            self._conn.execute("VACUUM")

    # -- the replication seam ----------------------------------------------------------

    def read_barrier(self) -> None:
        """Return once every write acknowledged anywhere is visible to reads here.

        A single manifest sees its own writes at once, so this does nothing; a replicated
        one (Raft) waits until its local copy has applied everything committed before the
        call. Servers call it once per request before reading.
        """

    def is_leader(self) -> bool:
        """Whether this process should run housekeeping meant to run once per repository
        (expiring abandoned uploads): always for a single manifest, the Raft leader's
        node in a cluster."""
        return True

    def cluster_status(self) -> dict[str, Any] | None:
        """Replication state for metrics and status (role, term, indexes, peers' match
        index); None for a manifest nothing replicates."""
        return None

    def snapshot_to(self, path: str | os.PathLike[str]) -> None:
        """Write a consistent, compacted copy of the whole database to ``path`` (which
        must not exist or be empty): what a replicated log compacts itself into.

        ``VACUUM INTO`` rather than the backup API: B-trees keyed by random chunk ids fill
        their pages to about 70 %, and the packed copy is 9 % smaller. Holds the lock, so
        the copy sits between two operations. (Manifest snapshots in the backends use
        ``copy_pages_to``: their diffs need page N to stay page N.)
        """
        with self._lock:
            self._check_open()
            self._conn.execute("VACUUM INTO ?", (os.fspath(path),))

    def copy_pages_to(self, path: str | os.PathLike[str]) -> None:
        """Write a consistent page-for-page copy of the whole database to ``path`` (which
        must not exist or be empty), through SQLite's backup API.

        Page N of the copy is page N here, so two copies differ only in the pages written
        between them: what an incremental manifest snapshot stores (``enigma.pagediff``).
        Two copies of an unchanged database are identical, byte for byte.
        """
        with self._lock:
            self._check_open()
            target = sqlite3.connect(os.fspath(path))
            try:
                self._conn.backup(target)
            finally:
                target.close()

    def restore_from(self, path: str | os.PathLike[str]) -> None:
        """Replace the whole database with the copy at ``path`` (a ``snapshot_to`` file).

        The connection stays valid, so holders of this object keep working; a node that
        installs a snapshot from its leader uses this. An older schema is migrated.
        """
        with self._lock:
            self._check_open()
            source = sqlite3.connect(os.fspath(path))
            try:
                version, app_id = self._header(source)
                self._check_version(version, app_id)
                source.backup(self._conn)
            finally:
                source.close()
            self._migrate()  # a copy made by an older Enigma

    def apply(self, op: str, *args: Any, **kwargs: Any) -> Any:
        """Run the mutating operation named ``op``: how a replicated log replays entries.

        Only names in ``MUTATING_OPERATIONS`` are accepted, so a log entry can never reach a
        read, a private helper or ``close``.
        """
        if op not in self.MUTATING_OPERATIONS:
            raise ValueError(f"unknown manifest operation {op!r}")
        return getattr(self, op)(*args, **kwargs)

    def apply_batch(self, operations: list[tuple[str, list[Any]]]) -> list[EnigmaError | None]:
        """Run several operations in one transaction: group commit for servers.

        ``operations`` are ``(name, positional args)`` of ``MUTATING_OPERATIONS``. Each
        runs in its own savepoint, so one that fails (a bucket deleted meanwhile, a
        constraint) is undone alone and its error is returned in its slot while the rest
        commit together, with one fsync instead of one each. Any other exception (disk
        full, I/O) rolls the whole batch back and is raised. Being one call with plain
        arguments, a batch replicates and replays like any single operation.
        """
        for name, _args in operations:
            if name not in self.MUTATING_OPERATIONS or name == "apply_batch":
                raise ValueError(f"unknown manifest operation {name!r} in a batch")
        results: list[EnigmaError | None] = []
        with self._write():
            self._batching = True
            try:
                for name, args in operations:
                    try:
                        getattr(self, name)(*args)
                    except EnigmaError as exc:
                        results.append(exc)
                    else:
                        results.append(None)
            finally:
                self._batching = False
        return results

    # -- helpers used inside transactions -----------------------------------------------

    @staticmethod
    def _missing_chunks(conn: sqlite3.Connection, ids: Iterable[bytes]) -> set[bytes]:
        wanted = set(ids)
        found: set[bytes] = set()
        for batch in _batches(wanted):
            rows = conn.execute(f"SELECT id FROM chunks WHERE id IN ({_marks(len(batch))})", batch)
            found.update(bytes(r[0]) for r in rows)
        return wanted - found

    @staticmethod
    def _require_backup(conn: sqlite3.Connection, backup_id: str) -> None:
        if conn.execute("SELECT 1 FROM backups WHERE id = ?", (backup_id,)).fetchone() is None:
            raise NotFoundError(f"no backup {backup_id!r} (see: enigma list)")

    @staticmethod
    def _add_refs(conn: sqlite3.Connection, counts: Counter[bytes], sign: int) -> None:
        conn.executemany(
            "UPDATE chunks SET refcount = refcount + ? WHERE id = ?",
            ((sign * n, cid) for cid, n in counts.items()),
        )

    # -- mutations: chunks --------------------------------------------------------------

    def add_chunks(self, records: list[ChunkRecord]) -> None:
        """Record chunks that are fully stored; known ones only gain new locations.

        ``refcount`` of the records is ignored: references are counted by ``add_files`` and
        ``put_object`` so the count can never disagree with the rows that reference it. A
        location is only added where the known record's object is the same (both whole
        objects, or both in the same pack): a second copy sitting in another pack is not
        where the record says the chunk is.
        """
        with self._write() as conn:
            # sorted: a pack gets the same number on every replica (a set's order is not)
            conn.executemany("INSERT OR IGNORE INTO packs (name) VALUES (?)",
                             [(p,) for p in sorted({bytes(r.pack) for r in records if r.pack})])
            conn.executemany(
                "INSERT OR IGNORE INTO chunks (id, size, stored_size, compression, key_id,"
                " refcount, created_at, pack, pack_offset)"
                f" VALUES (?, ?, ?, ?, ?, 0, ?, {_PACK_NUMBER}, ?)",
                (
                    (bytes(r.id), r.size, r.stored_size, r.compression, r.key_id, r.created_at,
                     None if r.pack is None else bytes(r.pack), r.offset)
                    for r in records
                ),
            )
            conn.executemany(
                "INSERT OR IGNORE INTO chunk_locations (chunk_id, provider)"
                f" SELECT ?, ? WHERE (SELECT pack FROM chunks WHERE id = ?) IS {_PACK_NUMBER}",
                ((bytes(r.id), p, bytes(r.id), None if r.pack is None else bytes(r.pack))
                 for r in records for p in r.providers),
            )

    def delete_chunks(self, ids: list[bytes]) -> None:
        """Drop chunk rows that nothing references; referenced ones are silently kept.

        Checks the reference tables as well as ``refcount``: gc deletes the stored objects
        after this commits, so a drifted count must not be able to lose data.
        """
        with self._write() as conn:
            for batch in _batches(bytes(i) for i in ids):
                conn.execute(
                    f"DELETE FROM chunks WHERE id IN ({_marks(len(batch))}) AND refcount = 0"
                    " AND NOT EXISTS (SELECT 1 FROM file_chunks fc WHERE fc.chunk_id = chunks.id)"
                    " AND NOT EXISTS (SELECT 1 FROM object_chunks oc"
                    " WHERE oc.chunk_id = chunks.id)",
                    batch,
                )
            conn.execute(_EMPTY_PACKS)

    def set_chunk_providers(self, updates: list[tuple[bytes, list[str]]]) -> None:
        """Replace the providers of chunks (``enigma repair`` moved copies or shards).

        ``updates`` are ``(chunk id, provider labels)``; the caller has stored the objects
        on the new providers first. An unknown chunk id (gc dropped it meanwhile) is
        skipped, so no location is ever recorded for a chunk that is not there. The chunk
        lives as objects of its own afterwards: repair takes a damaged chunk out of its
        pack by writing it whole on every provider.
        """
        with self._write() as conn:
            for chunk_id, labels in updates:
                chunk_id = bytes(chunk_id)
                if conn.execute("SELECT 1 FROM chunks WHERE id = ?", (chunk_id,)).fetchone() \
                        is None:
                    continue
                conn.execute("UPDATE chunks SET pack = NULL, pack_offset = 0 WHERE id = ?",
                             (chunk_id,))
                conn.execute("DELETE FROM chunk_locations WHERE chunk_id = ?", (chunk_id,))
                conn.executemany(
                    "INSERT OR IGNORE INTO chunk_locations (chunk_id, provider) VALUES (?, ?)",
                    ((chunk_id, label) for label in labels),
                )
            conn.execute(_EMPTY_PACKS)

    def move_chunks(self, moves: list[tuple[bytes, bytes, bytes, int]]) -> None:
        """Point packed chunks at the pack gc copied them into: ``(chunk id, old pack,
        new pack, offset)``. The caller has stored and synced the new pack first; a chunk
        no longer in the old pack (or gone) is left alone, so a replay changes nothing."""
        with self._write() as conn:
            conn.executemany("INSERT OR IGNORE INTO packs (name) VALUES (?)",
                             [(p,) for p in sorted({bytes(new) for _, _, new, _ in moves})])
            conn.executemany(
                f"UPDATE chunks SET pack = {_PACK_NUMBER}, pack_offset = ?"
                f" WHERE id = ? AND pack = {_PACK_NUMBER}",
                ((bytes(new), offset, bytes(chunk_id), bytes(old))
                 for chunk_id, old, new, offset in moves))
            conn.execute(_EMPTY_PACKS)

    # -- mutations: backups -------------------------------------------------------------

    def begin_backup(self, record: BackupRecord) -> None:
        """Register a backup run before any of its files are added."""
        with self._write() as conn:
            conn.execute(
                f"INSERT INTO backups ({_BACKUP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.created_at,
                    record.finished_at,
                    record.status,
                    _dumps(list(record.sources)),
                    record.hostname,
                    _dumps(record.params),
                    _dumps(record.stats),
                ),
            )

    def add_files(self, backup_id: str, files: list[FileEntry]) -> None:
        """Add a batch of entries and count their chunk references, all or nothing. An
        entry with ``chunks`` records a new chunk list; one with only ``chunk_list`` names
        a recorded list (which must exist, else IntegrityError) and counts nothing again.

        Each entry goes into this backup's own version of its parent directory, made on
        first use (a directory's entries may come in several batches). Every referenced
        chunk must already be in ``chunks`` (the manifest only points at stored data);
        otherwise IntegrityError and nothing of the batch is kept. Ids are MAX(id)+1..
        inside the transaction, deterministic on every replica, which lets the inserts go
        through ``executemany``.
        """
        with self._write() as conn:
            self._require_backup(conn, backup_id)
            counts: Counter[bytes] = Counter(
                bytes(ref.chunk_id) for entry in files for ref in entry.chunks
            )
            missing = self._missing_chunks(conn, counts)
            if missing:
                raise IntegrityError(
                    f"backup {backup_id}: {len(missing)} referenced chunk(s) are not in the "
                    f"manifest: {_hex_list(missing)}"
                )
            shared = {e.chunk_list for e in files if e.chunk_list is not None and not e.chunks}
            gone = shared - self._known_lists(conn, shared)
            if gone:
                raise IntegrityError(
                    f"backup {backup_id}: {len(gone)} chunk list(s) are not in the manifest: "
                    f"{sorted(gone)[:3]}")
            dir_ids = self._own_dirs(conn, backup_id, {parent_path(e.path) for e in files})
            base = conn.execute("SELECT COALESCE(MAX(id), 0) FROM files").fetchone()[0]

            def chunk_list(file_id: int, e: FileEntry) -> int | None:
                if e.chunks:
                    return file_id  # a new list: named after its first entry
                return e.chunk_list

            conn.executemany(
                "INSERT INTO files (id, dir_id, name, type, size, mode, mtime_ns, target,"
                " uid, gid, inode, ctime_ns, chunk_list)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    (
                        base + i,
                        dir_ids[parent_path(e.path)],
                        entry_name(e.path),
                        e.type,
                        e.size,
                        e.mode,
                        e.mtime_ns,
                        e.target,
                        e.uid,
                        e.gid,
                        e.inode,
                        e.ctime_ns,
                        chunk_list(base + i, e),
                    )
                    for i, e in enumerate(files, start=1)
                ),
            )
            conn.executemany(
                'INSERT INTO file_chunks (list_id, seq, chunk_id, "offset", length)'
                " VALUES (?, ?, ?, ?, ?)",
                (
                    (base + i, seq, bytes(ref.chunk_id), ref.offset, ref.length)
                    for i, e in enumerate(files, start=1)
                    for seq, ref in enumerate(e.chunks)
                ),
            )
            self._add_refs(conn, counts, +1)

    @staticmethod
    def _known_lists(conn: sqlite3.Connection, list_ids: set[int]) -> set[int]:
        found: set[int] = set()
        for batch in _batches(list_ids):
            rows = conn.execute("SELECT DISTINCT list_id FROM file_chunks"
                                f" WHERE list_id IN ({_marks(len(batch))})", batch)
            found.update(r[0] for r in rows)
        return found

    @staticmethod
    def _own_dirs(conn: sqlite3.Connection, backup_id: str, paths: set[str]) -> dict[str, int]:
        """path -> id of ``backup_id``'s own version of each directory, made if missing."""
        ids: dict[str, int] = {}
        for path in sorted(paths):  # sorted: the same ids on every replica
            row = conn.execute("SELECT id FROM dirs WHERE origin = ? AND path = ?",
                               (backup_id, path)).fetchone()
            if row is None:
                dir_id = conn.execute("INSERT INTO dirs (origin, path) VALUES (?, ?)",
                                      (backup_id, path)).lastrowid
                conn.execute("INSERT INTO backup_dirs (backup_id, dir_id) VALUES (?, ?)",
                             (backup_id, dir_id))
                ids[path] = dir_id
            else:
                ids[path] = row[0]
        return ids

    def link_dirs(self, backup_id: str, dir_ids: list[int]) -> None:
        """Make directory versions recorded by earlier backups part of ``backup_id`` as
        they are: what a re-backup does for a directory in which nothing changed. The
        versions' chunk references are already counted (once per chunk list, not per
        backup), so this writes one row per directory and nothing else."""
        with self._write() as conn:
            self._require_backup(conn, backup_id)
            wanted = {int(i) for i in dir_ids}
            found: set[int] = set()
            for batch in _batches(wanted):
                rows = conn.execute(f"SELECT id FROM dirs WHERE id IN ({_marks(len(batch))})",
                                    batch)
                found.update(r[0] for r in rows)
            if wanted - found:
                raise IntegrityError(
                    f"backup {backup_id}: {len(wanted - found)} directory version(s) are "
                    f"not in the manifest: {sorted(wanted - found)[:3]}")
            conn.executemany(
                "INSERT OR IGNORE INTO backup_dirs (backup_id, dir_id) VALUES (?, ?)",
                ((backup_id, i) for i in sorted(wanted)))

    def log(self, backup_id: str, entries: list[LogEntry]) -> None:
        """Append audit-trail lines; kept even after the backup is deleted."""
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO backup_log (backup_id, at, level, event, path, message)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                ((backup_id, e.at, e.level, e.event, e.path, e.message) for e in entries),
            )

    def finish_backup(self, backup_id: str, finished_at: float, status: str, stats: dict) -> None:
        """Record how a run ended; a backup without this stays ``running`` (i.e. crashed)."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE backups SET finished_at = ?, status = ?, stats = ? WHERE id = ?",
                (finished_at, status, _dumps(stats), backup_id),
            )
            if cur.rowcount == 0:
                raise NotFoundError(f"no backup {backup_id!r} (see: enigma list)")

    def backup_progress(self, backup_id: str, stats: dict) -> None:
        """Partial stats of a running backup, so others (the dashboard) can watch it; a
        finished backup's final stats are never overwritten."""
        with self._write() as conn:
            conn.execute("UPDATE backups SET stats = ? WHERE id = ? AND status = 'running'",
                         (_dumps(stats), backup_id))

    def delete_backup(self, backup_id: str) -> None:
        """Forget a backup; its log stays as audit trail.

        Its directory versions stay until gc drops the ones no backup links any more
        (``drop_unlinked_dirs``, with the repository locked): a backup running meanwhile
        may be about to link them, like restic's forget leaving the trees to prune.
        """
        with self._write() as conn:
            self._require_backup(conn, backup_id)
            conn.execute("DELETE FROM backups WHERE id = ?", (backup_id,))  # cascades

    def drop_unlinked_dirs(self) -> int:
        """Delete the directory versions no backup links and release their chunk
        references (gc's first step); returns how many went."""
        with self._write() as conn:
            dead = [r[0] for r in conn.execute(_UNLINKED_DIRS)]
            # The chunk lists the dropped entries named, in a temporary table: a list
            # goes only if no entry left names it, found in one pass over ``files``.
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS dropped_lists"
                         " (id INTEGER PRIMARY KEY)")
            for batch in _batches(dead):
                marks = _marks(len(batch))
                conn.execute("INSERT OR IGNORE INTO temp.dropped_lists SELECT chunk_list"
                             f" FROM files WHERE dir_id IN ({marks})"
                             " AND chunk_list IS NOT NULL", batch)
                conn.execute(f"DELETE FROM dirs WHERE id IN ({marks})", batch)  # cascades
            for statement in (
                "DELETE FROM temp.dropped_lists WHERE id IN"
                " (SELECT chunk_list FROM files WHERE chunk_list IS NOT NULL)",
                "UPDATE chunks SET refcount = refcount - r.n"
                " FROM (SELECT fc.chunk_id AS chunk_id, count(*) AS n FROM temp.dropped_lists d"
                "       JOIN file_chunks fc ON fc.list_id = d.id GROUP BY fc.chunk_id) AS r"
                " WHERE chunks.id = r.chunk_id",
                "DELETE FROM file_chunks WHERE list_id IN (SELECT id FROM temp.dropped_lists)",
                "DELETE FROM temp.dropped_lists",
            ):
                conn.execute(statement)
        return len(dead)

    # -- mutations: gateway buckets and objects -----------------------------------------

    def create_bucket(self, record: BucketRecord) -> None:
        """Create a gateway bucket; an existing name raises IntegrityError."""
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM buckets WHERE name = ?", (record.name,)).fetchone():
                raise IntegrityError(f"bucket {record.name!r} already exists")
            conn.execute(
                "INSERT INTO buckets (name, owner, created_at, region) VALUES (?, ?, ?, ?)",
                (record.name, record.owner, record.created_at, record.region),
            )

    def delete_bucket(self, name: str) -> None:
        """Delete an empty bucket (S3 refuses non-empty ones, and so do we)."""
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM buckets WHERE name = ?", (name,)).fetchone() is None:
                raise NotFoundError(f"no bucket {name!r}")
            if conn.execute("SELECT 1 FROM objects WHERE bucket = ? LIMIT 1", (name,)).fetchone():
                raise IntegrityError(f"bucket {name!r} is not empty")
            conn.execute("DELETE FROM buckets WHERE name = ?", (name,))

    @staticmethod
    def _drop_object(conn: sqlite3.Connection, bucket: str, key: str) -> None:
        rows = conn.execute(
            "SELECT chunk_id, count(*) FROM object_chunks WHERE bucket = ? AND key = ?"
            " GROUP BY chunk_id",
            (bucket, key),
        )
        Manifest._add_refs(conn, Counter({bytes(r[0]): r[1] for r in rows}), -1)
        conn.execute("DELETE FROM objects WHERE bucket = ? AND key = ?", (bucket, key))

    def put_object(self, record: ObjectRecord) -> None:
        """Create or replace an object, moving chunk references from the old to the new."""
        with self._write() as conn:
            if (
                conn.execute("SELECT 1 FROM buckets WHERE name = ?", (record.bucket,)).fetchone()
                is None
            ):
                raise NotFoundError(f"no bucket {record.bucket!r}")
            counts: Counter[bytes] = Counter(bytes(r.chunk_id) for r in record.chunks)
            missing = self._missing_chunks(conn, counts)
            if missing:
                raise IntegrityError(
                    f"object {record.bucket}/{record.key}: {len(missing)} referenced chunk(s) "
                    f"are not in the manifest: {_hex_list(missing)}"
                )
            self._drop_object(conn, record.bucket, record.key)
            conn.execute(
                f"INSERT INTO objects ({_OBJECT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.bucket,
                    record.key,
                    record.size,
                    record.etag,
                    record.created_at,
                    record.content_type,
                    _dumps(record.metadata),
                ),
            )
            conn.executemany(
                'INSERT INTO object_chunks (bucket, key, seq, chunk_id, "offset", length)'
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    (record.bucket, record.key, seq, bytes(r.chunk_id), r.offset, r.length)
                    for seq, r in enumerate(record.chunks)
                ),
            )
            self._add_refs(conn, counts, +1)

    def delete_object(self, bucket: str, key: str) -> None:
        """Delete an object and release its chunk references; a missing one is a no-op."""
        with self._write() as conn:
            self._drop_object(conn, bucket, key)

    # -- reads: chunks ------------------------------------------------------------------

    def has_chunk(self, id: bytes) -> bool:
        """Whether the chunk is recorded as stored (the dedup check)."""
        with self._read() as conn:
            return (
                conn.execute("SELECT 1 FROM chunks WHERE id = ?", (bytes(id),)).fetchone()
                is not None
            )

    def get_chunk(self, id: bytes) -> ChunkRecord | None:
        """The chunk's record with its providers (sorted), or None."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_CHUNK_COLUMNS}, l.provider FROM chunks c"
                " LEFT JOIN chunk_locations l ON l.chunk_id = c.id WHERE c.id = ?",
                (bytes(id),),
            ).fetchall()
        return _chunk_from_rows(rows) if rows else None

    def get_chunks(self, ids: Iterable[bytes]) -> dict[bytes, ChunkRecord]:
        """Records of the ``ids`` that exist: one query per 500 ids (a restore looks up a
        whole batch of small files' chunks at once)."""
        return {record.id: record for record in self._chunks_where("id", ids)}

    def _chunks_where(self, column: str, keys: Iterable[bytes]) -> Iterator[ChunkRecord]:
        """Records whose ``column`` (``id`` or ``pack``) is one of ``keys``, 500 a query."""
        for batch in _batches(sorted({bytes(k) for k in keys})):
            marks = _marks(len(batch))
            if column == "pack":
                hint = " INDEXED BY chunks_pack"
                match = f"c.pack IN (SELECT id FROM packs WHERE name IN ({marks}))"
            else:
                hint, match = "", f"c.id IN ({marks})"
            with self._read() as conn:
                rows = conn.execute(
                    f"SELECT {_CHUNK_COLUMNS}, l.provider FROM chunks c{hint}"
                    " LEFT JOIN chunk_locations l ON l.chunk_id = c.id"
                    f" WHERE {match} ORDER BY c.id", batch,
                ).fetchall()
            yield from _group_chunks(rows)

    def known_chunks(self, ids: Iterable[bytes]) -> set[bytes]:
        """The subset of ``ids`` already stored: one query per 500 ids, not one per id."""
        wanted = [bytes(i) for i in ids]
        found: set[bytes] = set()
        for batch in _batches(wanted):
            with self._read() as conn:
                rows = conn.execute(
                    f"SELECT id FROM chunks WHERE id IN ({_marks(len(batch))})", batch
                ).fetchall()
            found.update(bytes(r[0]) for r in rows)
        return found

    def pack_chunk_counts(self, pack_ids: Iterable[bytes]) -> dict[bytes, int]:
        """How many chunk records point into each of ``pack_ids``; a pack nothing points
        at is absent (gc deletes it, check calls it an orphan)."""
        wanted = [bytes(i) for i in pack_ids]
        found: dict[bytes, int] = {}
        for batch in _batches(wanted):
            with self._read() as conn:
                rows = conn.execute(
                    "SELECT p.name, count(*) FROM packs p"
                    " JOIN chunks c INDEXED BY chunks_pack ON c.pack = p.id"
                    f" WHERE p.name IN ({_marks(len(batch))}) GROUP BY p.id", batch).fetchall()
            found.update((bytes(r[0]), r[1]) for r in rows)
        return found

    def chunks_in_packs(self, pack_ids: Iterable[bytes]) -> list[ChunkRecord]:
        """Records of the chunks in ``pack_ids``, by pack and offset (gc repacks them)."""
        return sorted(self._chunks_where("pack", pack_ids),
                      key=lambda r: (r.pack or b"", r.offset))

    def iter_chunk_ids(self) -> Iterator[bytes]:
        """Every chunk id, streamed (the backup's dedup prefilter is built from them)."""
        with self._reader() as conn:
            for (chunk_id,) in conn.execute("SELECT id FROM chunks"):
                yield bytes(chunk_id)

    def iter_chunks(self) -> Iterator[ChunkRecord]:
        """Every chunk in id order, streamed (verify and gc walk the whole repository)."""
        with self._reader() as conn:
            rows = conn.execute(
                f"SELECT {_CHUNK_COLUMNS}, l.provider FROM chunks c"
                " LEFT JOIN chunk_locations l ON l.chunk_id = c.id ORDER BY c.id, l.provider"
            )
            yield from _group_chunks(rows)

    def unreferenced_chunks(self, *, counting_unlinked: bool = False) -> list[ChunkRecord]:
        """Chunks nothing points at: gc's candidates. ``counting_unlinked`` also counts
        those only directory versions no backup links point at (what gc's dry run shows
        before ``drop_unlinked_dirs`` would release them); that reads every chunk row."""
        if counting_unlinked:
            sql = (
                f"WITH dead AS ({_UNLINKED_DIRS}),"
                " orphans AS (SELECT DISTINCT f.chunk_list AS id FROM dead"
                "   JOIN files f ON f.dir_id = dead.id WHERE f.chunk_list IS NOT NULL"
                "   AND f.chunk_list NOT IN (SELECT chunk_list FROM files"
                "     WHERE chunk_list IS NOT NULL AND dir_id NOT IN (SELECT id FROM dead))),"
                " released AS (SELECT fc.chunk_id AS chunk_id, count(*) AS n"
                "   FROM orphans JOIN file_chunks fc ON fc.list_id = orphans.id"
                "   GROUP BY fc.chunk_id)"
                f" SELECT {_CHUNK_COLUMNS}, l.provider FROM chunks c"
                " LEFT JOIN released r ON r.chunk_id = c.id"
                " LEFT JOIN chunk_locations l ON l.chunk_id = c.id"
                " WHERE c.refcount = COALESCE(r.n, 0) ORDER BY c.id, l.provider"
            )
        else:
            sql = (
                f"SELECT {_CHUNK_COLUMNS}, l.provider FROM chunks c INDEXED BY chunks_unreferenced"
                " LEFT JOIN chunk_locations l ON l.chunk_id = c.id"
                " WHERE c.refcount = 0 ORDER BY c.id, l.provider"
            )
        with self._read() as conn:
            rows = conn.execute(sql).fetchall()
        return list(_group_chunks(rows))

    def chunk_stats(self) -> dict[str, tuple[int, int]]:
        """provider -> (chunk count, stored bytes held there)."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT l.provider, count(*), COALESCE(SUM(c.stored_size), 0)"
                " FROM chunk_locations l JOIN chunks c ON c.id = l.chunk_id"
                " GROUP BY l.provider ORDER BY l.provider"
            ).fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    def chunk_totals(self) -> tuple[int, int, int]:
        """(chunk count, plaintext bytes, stored bytes of one copy of each chunk)."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT count(*), COALESCE(SUM(size), 0), COALESCE(SUM(stored_size), 0) FROM chunks"
            ).fetchone()
        return row[0], row[1], row[2]

    # -- reads: backups -----------------------------------------------------------------

    def list_backups(self) -> list[BackupRecord]:
        """All backups, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_BACKUP_COLUMNS} FROM backups ORDER BY created_at, id"
            ).fetchall()
        return [_backup_from_row(r) for r in rows]

    def get_backup(self, id_or_prefix: str) -> BackupRecord:
        """A backup by exact id or by a unique prefix of at least 4 characters."""
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_BACKUP_COLUMNS} FROM backups WHERE id = ?", (id_or_prefix,)
            ).fetchone()
            if row is not None:
                return _backup_from_row(row)
            rows: list[tuple] = []
            if len(id_or_prefix) >= 4:
                upper = _prefix_upper_bound(id_or_prefix)
                sql = f"SELECT {_BACKUP_COLUMNS} FROM backups WHERE id >= ?"
                params: list[str] = [id_or_prefix]
                if upper is not None:
                    sql += " AND id < ?"
                    params.append(upper)
                rows = conn.execute(sql + " ORDER BY id LIMIT 6", params).fetchall()
        if len(rows) == 1:
            return _backup_from_row(rows[0])
        if len(rows) > 1:
            shown = ", ".join(r[0] for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
            raise NotFoundError(
                f"backup prefix {id_or_prefix!r} is ambiguous: matches {shown}"
                " (give more characters)"
            )
        raise NotFoundError(f"no backup {id_or_prefix!r} (see: enigma list)")

    @staticmethod
    def _dirs_of(conn: sqlite3.Connection, backup_id: str,
                 prefix: str | None = None) -> list[tuple[int, str]]:
        """(id, path) of the directory versions of a backup that hold ``prefix`` or
        anything below it (all of them without a prefix), in path order."""
        sql = ("SELECT d.id, d.path FROM backup_dirs bd JOIN dirs d ON d.id = bd.dir_id"
               " WHERE bd.backup_id = ?")
        params: list[object] = [backup_id]
        if prefix:
            # "/" is 0x2F and "0" is 0x30: [prefix + "/", prefix + "0") is exactly the
            # subtree in binary collation.
            sql += " AND (d.path IN (?, ?) OR (d.path >= ? AND d.path < ?))"
            params += [parent_path(prefix), prefix, prefix + "/", prefix + "0"]
        return conn.execute(sql + " ORDER BY d.path, d.id", params).fetchall()

    @classmethod
    def _versions_to_read(cls, conn: sqlite3.Connection, backup_id: str, prefix: str | None
                          ) -> Iterator[tuple[int, str, str, tuple[str, ...]]]:
        """``_dirs_of`` with what to add to a ``files f`` query of each: the version that
        holds ``prefix`` itself (its parent's) is read for that one name only."""
        for dir_id, path in cls._dirs_of(conn, backup_id, prefix):
            if prefix and path == parent_path(prefix):
                yield dir_id, path, " AND f.name = ?", (entry_name(prefix),)
            else:
                yield dir_id, path, "", ()

    def iter_files(self, backup_id: str, prefix: str | None = None) -> Iterator[FileEntry]:
        """A backup's entries with their chunks in tree order (depth first, each
        directory's entries by name, a directory right before what it holds: ``find``'s
        and ``restic ls``' order), streamed.

        ``prefix`` selects that path and everything below it: "a/b" matches "a/b" and
        "a/b/c" but not "a/bc". A query per directory version, on a private connection
        inside one read transaction (one consistent snapshot), so a million-file backup
        is never held in memory; only its directory paths are.
        """
        if prefix is not None:
            prefix = prefix.rstrip("/")
        sql = (
            f'SELECT {_FILE_COLUMNS}, fc.chunk_id, fc."offset", fc.length'
            " FROM files f LEFT JOIN file_chunks fc ON fc.list_id = f.chunk_list WHERE f.dir_id = ?"
        )
        with self._reader() as conn:
            conn.execute("BEGIN")
            versions: dict[str, list[int]] = {}
            # path -> the paths one level deeper that lead to versions. Whole paths, not
            # names: a hostile "/tmp" and "tmp" share the name and must both be reached.
            below: dict[str, set[str]] = {}
            top = prefix or ""
            for dir_id, path, only, extra in self._versions_to_read(conn, backup_id, prefix):
                if only:  # the prefix's own entry, before anything below it
                    yield from _files_from_rows(conn.execute(
                        sql + only + " ORDER BY fc.seq", (path_base(path), dir_id, *extra)))
                    continue
                versions.setdefault(path, []).append(dir_id)
                while path != top:  # parent_path shortens: this ends at "" at the latest
                    parent = parent_path(path)
                    below.setdefault(parent, set()).add(path)
                    path = parent

            def name(path: str) -> str:
                return path.rpartition("/")[2]

            def visit(path: str) -> Iterator[FileEntry]:
                deeper = iter(sorted(below.get(path, ()), key=name))
                pending = next(deeper, None)
                for dir_id in versions.get(path, ()):
                    for entry in _files_from_rows(conn.execute(
                            sql + " ORDER BY f.name, fc.seq", (path_base(path), dir_id))):
                        while pending is not None and name(pending) < name(entry.path):
                            yield from visit(pending)
                            pending = next(deeper, None)
                        yield entry
                        if pending == entry.path:
                            yield from visit(pending)
                            pending = next(deeper, None)
                while pending is not None:
                    yield from visit(pending)
                    pending = next(deeper, None)

            yield from visit(top)

    def file_count(self, backup_id: str) -> int:
        """Number of entries (files, dirs, symlinks) in a backup."""
        with self._read() as conn:
            return conn.execute(
                "SELECT count(*) FROM backup_dirs bd JOIN files f ON f.dir_id = bd.dir_id"
                " WHERE bd.backup_id = ?", (backup_id,)
            ).fetchone()[0]

    def backup_chunk_ids(self, backup_id: str) -> Iterator[bytes]:
        """Each distinct chunk id a backup uses, once, streamed (for verify)."""
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT DISTINCT fc.chunk_id FROM backup_dirs bd"
                " JOIN files f ON f.dir_id = bd.dir_id"
                " JOIN file_chunks fc ON fc.list_id = f.chunk_list WHERE bd.backup_id = ?",
                (backup_id,),
            )
            for row in rows:
                yield bytes(row[0])

    def files_using_chunks(
        self, backup_id: str, chunk_ids: Iterable[bytes]
    ) -> dict[bytes, list[str]]:
        """chunk id -> sorted paths in the backup that use it, to report what damage hits.

        Chunks the backup does not use are absent from the result.
        """
        result: dict[bytes, set[str]] = {}
        for batch in _batches({bytes(c) for c in chunk_ids}):
            with self._read() as conn:
                rows = conn.execute(
                    f"SELECT fc.chunk_id, {_JOINED_PATH} FROM file_chunks fc"
                    " JOIN files f ON f.chunk_list = fc.list_id JOIN dirs d ON d.id = f.dir_id"
                    " JOIN backup_dirs bd ON bd.dir_id = f.dir_id"
                    f" WHERE fc.chunk_id IN ({_marks(len(batch))}) AND bd.backup_id = ?",
                    [*batch, backup_id],
                ).fetchall()
            for chunk_id, path in rows:
                result.setdefault(bytes(chunk_id), set()).add(path)
        return {cid: sorted(paths) for cid, paths in result.items()}

    def chunk_files(self, chunk_ids: Iterable[bytes]) -> dict[bytes, list[tuple[str, str]]]:
        """chunk id -> sorted (backup id, path) of every file in any backup that uses it,
        so ``check`` can name what a damaged chunk hurts. Unused chunks are absent."""
        return self._chunk_users(
            f"SELECT fc.chunk_id, bd.backup_id, {_JOINED_PATH} FROM file_chunks fc"
            " JOIN files f ON f.chunk_list = fc.list_id JOIN dirs d ON d.id = f.dir_id"
            " JOIN backup_dirs bd ON bd.dir_id = f.dir_id"
            " WHERE fc.chunk_id IN ({marks})",
            chunk_ids,
        )

    def file_cache(self, backup_id: str,
                   prefix: str | None = None) -> Iterator[tuple[int, str, tuple]]:
        """What a re-backup compares the disk with: (directory version id, its path, row)
        for each entry of a backup at or below ``prefix``. A row is the plain tuple
        ``_FILE_COLUMNS`` + the entry's chunk count + its chunk list's id, no
        ``FileEntry``: a re-backup that changed nothing reads tens of thousands of these
        and builds none. An unchanged file names its list (``FileEntry.chunk_list``)
        instead of reading it."""
        sql = (f"SELECT {_FILE_COLUMNS}, (SELECT count(*) FROM file_chunks fc"
               " WHERE fc.list_id = f.chunk_list), f.chunk_list FROM files f"
               " WHERE f.dir_id = ?")
        with self._reader() as conn:
            conn.execute("BEGIN")
            for dir_id, path, only, extra in self._versions_to_read(conn, backup_id, prefix):
                for row in conn.execute(sql + only, (path_base(path), dir_id, *extra)):
                    yield dir_id, path, row

    def chunk_objects(self, chunk_ids: Iterable[bytes]) -> dict[bytes, list[tuple[str, str]]]:
        """chunk id -> sorted (bucket, key) of every gateway object (multipart parts
        included) that uses it. Unused chunks are absent."""
        return self._chunk_users(
            "SELECT chunk_id, bucket, key FROM object_chunks WHERE chunk_id IN ({marks})",
            chunk_ids,
        )

    def _chunk_users(
        self, sql: str, chunk_ids: Iterable[bytes]
    ) -> dict[bytes, list[tuple[str, str]]]:
        result: dict[bytes, set[tuple[str, str]]] = {}
        for batch in _batches({bytes(c) for c in chunk_ids}):
            with self._read() as conn:
                rows = conn.execute(sql.format(marks=_marks(len(batch))), batch).fetchall()
            for chunk_id, first, second in rows:
                result.setdefault(bytes(chunk_id), set()).add((first, second))
        return {cid: sorted(users) for cid, users in result.items()}

    def backup_log(self, backup_id: str) -> list[LogEntry]:
        """A backup's audit trail in the order it was written (works after deletion too)."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT at, level, event, path, message FROM backup_log"
                " WHERE backup_id = ? ORDER BY id",
                (backup_id,),
            ).fetchall()
        return [LogEntry(at=r[0], level=r[1], event=r[2], path=r[3], message=r[4]) for r in rows]

    # -- reads: gateway -----------------------------------------------------------------

    def get_bucket(self, name: str) -> BucketRecord | None:
        """The bucket, or None."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT name, owner, created_at, region FROM buckets WHERE name = ?", (name,)
            ).fetchone()
        return BucketRecord(*row) if row else None

    def list_buckets(self) -> list[BucketRecord]:
        """All buckets by name."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT name, owner, created_at, region FROM buckets ORDER BY name"
            ).fetchall()
        return [BucketRecord(*r) for r in rows]

    def get_object(self, bucket: str, key: str) -> ObjectRecord | None:
        """The object with its chunk list in order, or None."""
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE bucket = ? AND key = ?",
                (bucket, key),
            ).fetchone()
            if row is None:
                return None
            refs = conn.execute(
                'SELECT chunk_id, "offset", length FROM object_chunks'
                " WHERE bucket = ? AND key = ? ORDER BY seq",
                (bucket, key),
            ).fetchall()
        record = _object_from_row(row)
        record.chunks = [ChunkRef(bytes(r[0]), r[1], r[2]) for r in refs]
        return record

    def list_objects(
        self, bucket: str, prefix: str = "", start_after: str = "", limit: int = 1000
    ) -> list[ObjectRecord]:
        """One page of a bucket in UTF-8 byte order (S3's order), without chunk lists."""
        sql = f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE bucket = ? AND key > ?"
        params: list[object] = [bucket, start_after]
        if prefix:
            sql += " AND key >= ?"
            params.append(prefix)
            upper = _prefix_upper_bound(prefix)
            if upper is not None:
                sql += " AND key < ?"
                params.append(upper)
        sql += " ORDER BY key LIMIT ?"
        params.append(limit)
        with self._read() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [_object_from_row(r) for r in rows]

    def list_dir(
        self, backup_id: str, path: str, limit: int = 1000
    ) -> list[tuple[str, FileEntry | None]]:
        """The direct children of ``path`` in a backup ("" is the top), sorted by name,
        without chunks: (name, entry), the entry None for a directory only implied by
        deeper paths (the parents of a backup's sources). At most ``limit`` children.

        Reads the directory's own version(s) and the paths of the versions below it, so
        a folder costs about its own size plus its subtree's directory count (the
        dashboard's browser).
        """
        base = path.strip("/")
        children: dict[str, FileEntry | None] = {}
        with self._reader() as conn:
            conn.execute("BEGIN")
            for dir_id, dir_path in self._dirs_of(conn, backup_id, base or None):
                if dir_path == base:
                    rows = conn.execute(
                        f"SELECT {_FILE_COLUMNS} FROM files f WHERE f.dir_id = ?"
                        " ORDER BY f.name LIMIT ?", (path_base(dir_path), dir_id, limit))
                    for row in rows:
                        children[row[1].rpartition("/")[2]] = _file_from_row(row)
                elif dir_path.startswith(path_base(base)):
                    name = dir_path[len(path_base(base)):].partition("/")[0]
                    children.setdefault(name, None)
        return sorted(children.items())[:limit]
