"""``enigma recover``: a lost machine's keystore and manifest, rebuilt from the backends.

Order of work: the keystore (``keys/keystore`` from the providers, unlocked before anything
is written), then the newest manifest snapshot that authenticates, decompresses and passes
SQLite's integrity check, a diff once applied over its base (installed by an atomic rename,
or through SQLite's backup API over an existing manifest with ``--force``). When no
snapshot is usable, the chunk index is rebuilt by listing and authenticating every chunk
object, so new backups deduplicate against what is stored; backup and file lists are then
lost.
"""

from __future__ import annotations

import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from enigma import crypto
from enigma.chunkstore import ChunkStore, stored_chunks, stored_packs, with_retries
from enigma.errors import (
    AuthError,
    ConfigError,
    EnigmaError,
    IntegrityError,
    NotFoundError,
    ObjectNotFound,
    StorageError,
)
from enigma.fsutil import fsync_dir
from enigma.interfaces import StorageProvider
from enigma.manifest import APPLICATION_ID, SCHEMA_VERSION, ChunkRecord, Manifest
from enigma.packs import pack_key, read_index
from enigma.pagediff import apply_diff
from enigma.progress import NO_PROGRESS, Progress
from enigma.recovery import (
    KEYSTORE_OBJECT,
    SNAPSHOT_PREFIX,
    list_snapshots,
    open_snapshot,
    plain_providers,
    scratch_dir,
    snapshot_base,
    snapshot_key,
    snapshot_second,
)
from enigma.repository import Repository

#: Tables every manifest schema has had since version 1: a snapshot without them is not one.
REQUIRED_TABLES = frozenset({"backups", "files", "chunks", "chunk_locations", "file_chunks",
                             "backup_log", "buckets", "objects", "object_chunks"})
#: Chunks checked at once while rebuilding the index (downloads overlap, CPU is shared).
REBUILD_WORKERS = 8
_ADD_BATCH = 1000


@dataclass
class Skip:
    """A snapshot copy or chunk copy that could not be used, and why."""

    what: str  # snapshot name, or chunk id in hex
    provider: str
    reason: str


@dataclass
class RecoverResult:
    keystore: str = ""  # where the keys came from, for people
    key_versions: list[int] = field(default_factory=list)
    snapshot: str = ""  # the snapshot installed; "" when the chunk index was rebuilt
    snapshot_provider: str = ""
    snapshot_created: float = 0.0
    backups: int = 0
    chunks: int = 0
    skipped: list[Skip] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)
    #: Provider names the snapshot's chunks live on that enigma.toml does not configure.
    unknown_providers: list[str] = field(default_factory=list)
    rebuilt: bool = False
    damaged: list[Skip] = field(default_factory=list)


def run_recover(repo: Repository, passphrase: str | None, *, force: bool = False,
                progress: Progress = NO_PROGRESS) -> RecoverResult:
    """Recover keys and manifest for ``repo`` (whose config dir may hold only enigma.toml).

    ``progress`` shows the phase as its current item and, when the chunk index is rebuilt,
    counts chunks checked (files) and their plaintext bytes.
    """
    if repo.config.raw.get("raft") is not None:
        raise ConfigError("enigma recover rebuilds one machine's manifest and does not run "
                          "with [raft] in enigma.toml: recover without it first")
    refuse_existing(repo.config.db_path, force)
    result = RecoverResult()
    result.keystore = recover_keys(repo, passphrase, result)
    result.key_versions = sorted(repo.keys.data_keys)
    with progress.running("recover"):
        return _recover_manifest(repo, result, progress)


def _recover_manifest(repo: Repository, result: RecoverResult,
                      progress: Progress) -> RecoverResult:
    """The newest good snapshot, else a chunk index rebuilt from the chunks themselves."""
    providers = repo.providers
    progress.current_file("looking for manifest snapshots")
    key = snapshot_key(repo.keys)
    with scratch_dir(repo) as tmp:
        found = find_snapshot(providers, key, tmp, result)
        if found is not None:
            install(found.path, repo.config.db_path)
            result.snapshot, result.snapshot_provider = found.name, found.provider
            result.snapshot_created = found.created_ns / 1e9
            result.backups, result.chunks = found.backups, found.chunks
            result.unknown_providers = sorted(found.labels - set(providers))
            return result
    if len(result.unreachable) == len(providers):
        raise StorageError("no provider could be read: " + "; ".join(
            f"'{label}': {error}" for label, error in result.unreachable.items()))
    rebuild_chunk_index(repo, providers, result, progress=progress)
    return result


def refuse_existing(db_path: Path, force: bool) -> None:
    """A manifest that holds backups (or gateway buckets) is replaced only with --force."""
    if force or not db_path.exists():
        return
    with Manifest(db_path) as manifest:
        backups, buckets = len(manifest.list_backups()), len(manifest.list_buckets())
    if backups or buckets:
        held = f"{backups} backups" + (f" and {buckets} buckets" if buckets else "")
        raise ConfigError(f"manifest {db_path} already holds {held}; recover would replace "
                          "it: run 'enigma recover --force' to do that")


# --------------------------------------------------------------------------- keystore


def recover_keys(repo: Repository, passphrase: str | None, result: RecoverResult) -> str:
    """Make the key material available locally; return where it came from.

    A keystore copy is unlocked before it is written, so a wrong passphrase leaves nothing
    behind. Copies that differ (a rotation that missed a provider) are all unlocked and the
    one with the most data key versions wins.
    """
    provider = repo.key_provider
    if not hasattr(provider, "restore") or not hasattr(provider, "unlock_copy"):
        repo.keys  # noqa: B018 - vault providers: the keys never left the vault
        return f"key provider '{provider.name}'"
    if provider.exists():
        repo.keys  # noqa: B018 - checks the passphrase against the existing keystore
        return "the existing local keystore"
    if provider.needs_passphrase and not passphrase:
        raise ConfigError("a passphrase is required: use --passphrase, ENIGMA_PASSPHRASE, "
                          "or run in a terminal to be asked")
    copies = fetch_keystores(repo, result)
    if not copies:
        raise NotFoundError("no provider holds keys/keystore: nothing to recover the keys "
                            "from (was this repository made before keystores were mirrored? "
                            "copy its keystore file into the config directory)")
    labels = list(copies)
    if len(set(copies.values())) > 1:
        unlocked = {}
        for label, blob in copies.items():
            with suppress(AuthError, IntegrityError):
                unlocked[label] = provider.unlock_copy(blob, passphrase)
        if not unlocked:
            raise AuthError(f"wrong passphrase: the keystore on provider '{labels[0]}' does not "
                            "unlock with it (nothing was written)")
        # A write-only client's keystore holds no data keys at all (default 0).
        labels = sorted(unlocked, key=lambda lb: (max(unlocked[lb].data_keys, default=0),
                                                  len(unlocked[lb].data_keys)), reverse=True)
    chosen = labels[0]
    try:
        provider.restore(copies[chosen], passphrase)
    except AuthError:
        raise AuthError(f"wrong passphrase: the keystore on provider '{chosen}' does not "
                        "unlock with it (nothing was written)") from None
    return f"keys/keystore from provider '{chosen}'"


def fetch_keystores(repo: Repository, result: RecoverResult) -> dict[str, bytes]:
    """``keys/keystore`` from every provider that can be built without keys and holds it."""
    providers = plain_providers(repo)
    if not providers:
        raise ConfigError("every provider's credentials are enc: tokens, which need the "
                          "keystore: write one provider's credentials in plain text in "
                          "enigma.toml for the recovery, or copy the keystore file back")
    copies: dict[str, bytes] = {}
    try:
        for label, provider in providers.items():
            try:
                copies[label] = with_retries(f"provider '{label}'", provider.get,
                                             KEYSTORE_OBJECT)
            except ObjectNotFound:
                continue
            except EnigmaError as exc:
                result.unreachable[label] = str(exc)
    finally:
        for provider in providers.values():
            with suppress(Exception):
                provider.close()
    return copies


# --------------------------------------------------------------------------- snapshots


@dataclass(order=True)
class Found:
    """A snapshot copy that passed every check, decrypted into ``path``."""

    created_ns: int
    name: str
    provider: str
    path: Path
    backups: int = 0
    chunks: int = 0
    labels: frozenset[str] = frozenset()


def find_snapshot(providers: dict[str, StorageProvider], key: bytes, tmp: Path,
                  result: RecoverResult) -> Found | None:
    """The newest good snapshot, decrypted into a file under ``tmp``.

    Names sort by second; within one second the authenticated creation time in the header
    decides. A copy that fails is recorded in ``result.skipped`` and the same snapshot is
    tried on the next provider that holds it, then older snapshots.
    """
    holders: dict[str, list[str]] = {}
    for label, provider in providers.items():
        try:
            names = list_snapshots(provider)
        except EnigmaError as exc:
            result.unreachable[label] = str(exc)
            continue
        for name in names:
            holders.setdefault(name, []).append(label)
    candidates = 0
    for second in sorted({snapshot_second(n) for n in holders}, reverse=True):
        good: list[Found] = []
        for name in sorted((n for n in holders if snapshot_second(n) == second),
                           reverse=True):
            for label in holders[name]:
                candidates += 1
                copy = tmp / f"candidate-{candidates}.db"
                try:
                    created_ns = fetch_manifest_copy(providers, holders, label, name, key,
                                                     copy, tmp)
                    backups, chunks, labels = check_manifest_copy(copy)
                except Exception as exc:  # any failure of one copy: record it, try the next
                    result.skipped.append(Skip(name, label, _reason(exc)))
                    with suppress(FileNotFoundError):
                        copy.unlink()
                    continue
                good.append(Found(created_ns, name, label, copy, backups, chunks,
                                  frozenset(labels)))
                break
        if good:
            return max(good)
    return None


def fetch_manifest_copy(providers: dict[str, StorageProvider], holders: dict[str, list[str]],
                        label: str, name: str, key: bytes, copy: Path, tmp: Path) -> int:
    """The manifest copy snapshot ``name`` on provider ``label`` holds, into ``copy``; its
    creation time (ns). A diff is applied over its base, read from the first provider
    holding a good copy of it (``label`` first)."""
    base = snapshot_base(name)
    if not base:
        return fetch_snapshot(providers[label], name, key, copy, tmp / "sealed-plain")
    diff = tmp / "diff"
    try:
        created_ns = fetch_snapshot(providers[label], name, key, diff, tmp / "sealed-plain")
        failures = []
        for base_label in sorted(holders.get(base, ()), key=lambda held: held != label):
            try:
                fetch_snapshot(providers[base_label], base, key, copy, tmp / "sealed-plain")
                break
            except Exception as exc:  # try the base's next copy
                failures.append(f"provider '{base_label}': {_reason(exc)}")
        else:
            raise IntegrityError(f"its base snapshot {base} is " + (
                f"unusable ({'; '.join(failures)})" if failures else "on no provider"))
        apply_diff(diff, copy)
    finally:
        with suppress(FileNotFoundError):
            diff.unlink()
    return created_ns


def fetch_snapshot(provider: StorageProvider, name: str, key: bytes, db_out: Path,
                   scratch: Path) -> int:
    """Download, authenticate and decompress one snapshot copy; its creation time (ns)."""
    stream = with_retries(f"provider '{provider.label}'", provider.get_stream,
                          SNAPSHOT_PREFIX + name)
    try:
        return open_snapshot(stream, key, name, db_out, scratch)
    finally:
        stream.close()
        with suppress(FileNotFoundError):
            scratch.unlink()


def check_manifest_copy(path: Path) -> tuple[int, int, set[str]]:
    """SQLite integrity and schema checks; (backups, chunks, provider names) when good."""
    conn = sqlite3.connect(path)
    try:
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            raise IntegrityError(f"SQLite integrity check failed: {problems[0]}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if app_id != APPLICATION_ID:
            raise IntegrityError("not an Enigma manifest (wrong application id)")
        if not 0 < version <= SCHEMA_VERSION:
            raise IntegrityError(f"manifest schema version {version}; this Enigma reads up "
                                 f"to {SCHEMA_VERSION} (upgrade Enigma?)")
        tables = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = sorted(REQUIRED_TABLES - tables)
        if missing:
            raise IntegrityError(f"manifest schema lacks table(s) {', '.join(missing)}")
        backups = conn.execute("SELECT count(*) FROM backups").fetchone()[0]
        chunks = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
        labels = {row[0] for row in conn.execute(
            "SELECT DISTINCT provider FROM chunk_locations")}
    except sqlite3.DatabaseError as exc:
        raise IntegrityError(f"not a usable SQLite database: {exc}") from None
    finally:
        conn.close()
    return backups, chunks, labels


def install(copy: Path, target: Path) -> None:
    """Make ``copy`` the manifest: a rename when there is none (never half-written), or
    SQLite's backup API inside the existing one's lock with ``--force``."""
    if target.exists():
        with Manifest(target) as manifest:
            manifest.restore_from(copy)
        return
    for suffix in ("-wal", "-shm", "-journal"):  # leftovers of a deleted manifest
        with suppress(FileNotFoundError):
            os.unlink(f"{target}{suffix}")
    os.chmod(copy, 0o600)
    os.replace(copy, target)
    fsync_dir(target.parent)


# --------------------------------------------------------------------------- chunk index


def rebuild_chunk_index(repo: Repository, providers: dict[str, StorageProvider],
                        result: RecoverResult, *, progress: Progress = NO_PROGRESS) -> None:
    """List ``chunks/`` and ``packs/`` everywhere, authenticate every chunk (a pack's
    through its sealed index) and record the good ones, so
    new backups deduplicate against them. Chunks that do not authenticate go to
    ``result.damaged``.

    Each chunk is read the way restore reads it (``ChunkStore.fetch_sealed`` over every
    provider that lists it), so whole copies and erasure-coded shards both work; a chunk
    counts as good when some copy, or some set of shards, authenticates.
    """
    holders: dict[bytes, list[str]] = {}
    pack_holders: dict[bytes, list[str]] = {}
    progress.current_file("listing the providers' chunk objects")
    for label, provider in providers.items():
        if label in result.unreachable:
            continue
        try:
            listed = stored_chunks(label, provider)
            packs = stored_packs(label, provider)
        except EnigmaError as exc:
            result.unreachable[label] = str(exc)
            continue
        for chunk_id in listed:
            holders.setdefault(chunk_id, []).append(label)
        for pack_id in packs:
            pack_holders.setdefault(pack_id, []).append(label)
    store = ChunkStore(repo)
    progress.current_file(None)
    progress.set_totals(files=len(holders) + len(pack_holders))

    def check(item: tuple[bytes, list[str]]) -> ChunkRecord | Skip:
        chunk_id, labels = item
        probe = ChunkRecord(id=chunk_id, size=0, stored_size=0, compression="", key_id=0,
                            providers=tuple(labels))
        try:
            sealed = store.fetch_sealed(probe)
            return _authenticated(store, chunk_id, sealed, probe)
        except (EnigmaError, OSError) as exc:
            reason = str(exc).removeprefix(f"chunk {chunk_id.hex()[:12]}: ")
            return Skip(chunk_id.hex(), ", ".join(labels), reason)

    batch: list[ChunkRecord] = []

    def take(outcome: ChunkRecord | Skip) -> None:
        nonlocal batch
        if isinstance(outcome, Skip):
            result.damaged.append(outcome)
            progress.error(outcome.what, outcome.reason)
            return
        progress.advance(bytes=outcome.size)
        result.chunks += 1
        batch.append(outcome)
        if len(batch) >= _ADD_BATCH:
            store.manifest.add_chunks(batch)
            batch = []

    with ThreadPoolExecutor(max_workers=REBUILD_WORKERS) as pool:
        for outcome in pool.map(check, holders.items()):
            take(outcome)
            progress.advance(files=1)
        for outcomes in pool.map(lambda item: _read_pack(store, *item), pack_holders.items()):
            for outcome in outcomes:
                take(outcome)
            progress.advance(files=1)
    if batch:
        store.manifest.add_chunks(batch)
    result.rebuilt = True


def _authenticated(store: ChunkStore, chunk_id: bytes, sealed: bytes,
                   where: ChunkRecord) -> ChunkRecord:
    """The record of a sealed chunk that authenticates and matches its id, at ``where``'s
    providers (and pack); ``EnigmaError`` otherwise."""
    plain = store.open(chunk_id, sealed, check_id=True)
    header, _ = crypto.parse_header(sealed)
    return ChunkRecord(id=chunk_id, size=len(plain), stored_size=len(sealed),
                       compression=header.compression, key_id=header.key_id,
                       providers=where.providers, created_at=time.time(),
                       pack=where.pack, offset=where.offset)


def _read_pack(store: ChunkStore, pack_id: bytes, labels: list[str]) -> list[ChunkRecord | Skip]:
    """Every chunk of a pack that some copy of it holds soundly (a chunk damaged in one
    copy is taken from the next copy whose index authenticates)."""
    errors: list[str] = []
    found: dict[bytes, ChunkRecord] = {}
    failed: dict[bytes, Skip] = {}
    for label in labels:
        try:
            blob = with_retries(f"reading from provider '{label}'",
                                store.providers[label].get, pack_key(pack_id))
            entries = read_index(pack_id, blob, lambda i, s: store.sealer.open(i, s)[1])
        except (EnigmaError, OSError) as exc:
            errors.append(f"provider '{label}': {exc}")
            continue
        for entry in entries:
            if entry.chunk_id in found:
                continue
            where = ChunkRecord(id=entry.chunk_id, size=0, stored_size=entry.length,
                                compression="", key_id=0, providers=tuple(labels),
                                pack=pack_id, offset=entry.offset)
            sealed = blob[entry.offset:entry.offset + entry.length]
            try:
                found[entry.chunk_id] = _authenticated(store, entry.chunk_id, sealed, where)
                failed.pop(entry.chunk_id, None)
            except EnigmaError as exc:
                reason = str(exc).removeprefix(f"chunk {entry.chunk_id.hex()[:12]}: ")
                failed.setdefault(entry.chunk_id, Skip(entry.chunk_id.hex(), label, reason))
        if not failed:
            break
    if not found and not failed:
        return [Skip(pack_key(pack_id), ", ".join(labels), "; ".join(errors))]
    return [*found.values(), *failed.values()]


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
