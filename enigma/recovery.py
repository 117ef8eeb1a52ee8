"""What the backends keep so that a new machine recovers from them and the passphrase alone:
a copy of the keystore and sealed, versioned manifest snapshots (DESIGN §4).

Objects, in every storage provider::

    keys/keystore                      the local key provider's keystore file, byte for byte
                                       (already passphrase-encrypted; vault providers keep
                                       their keys in the vault and store nothing here)
    meta/manifest/<stamp>-<8 hex>                  a full manifest snapshot
    meta/manifest/<stamp>-<8 hex>+<base name>      a diff against the full snapshot named
                                                   after the "+" (``enigma.pagediff``)

``<stamp>`` is the UTC creation time, ``yyyymmddThhmmssZ``.

Manifest snapshot object (stable; changing it needs a version bump)::

    offset  size  field
    0       4     magic b"ENGM"
    4       1     format version: 1 a full snapshot, 2 a diff
    5       1     compression of the plaintext: 0 none, 1 zstd
    6       8     created at, nanoseconds since the epoch, u64 big-endian
    14      12    random nonce
    26      ...   AES-256-GCM ciphertext, then the 16-byte tag

A full snapshot's plaintext is a consistent page-for-page SQLite copy of the manifest
(``Manifest.copy_pages_to``); a diff's is the pages that changed since its base. Most
backups write a diff: a no-change re-backup changes about 2 % of the pages, and sealing
a full copy at zstd level 9 was the largest part of its time. A diff holding more than
half the pages is written as a full snapshot instead. The key is HKDF-SHA256(id_key,
info=b"enigma-manifest-snapshot-v1"): id_key never rotates, so every snapshot stays
readable after ``enigma key rotate``, and every key provider (local or vault) has it. The
AAD is the 14 header bytes followed by the snapshot's name (the part after
``meta/manifest/``, base included), so a snapshot can neither be renamed to pose as a
newer one or as another base's diff nor have its header edited without failing
authentication. Sealing and opening stream through files: memory stays flat however
large the manifest grows (one-shot AES-GCM in ``cryptography`` also stops at 2 GiB).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from enigma import crypto
from enigma.chunkstore import with_retries
from enigma.errors import EnigmaError, IntegrityError
from enigma.interfaces import KeyMaterial, StorageProvider
from enigma.pagediff import BaseDigests, changed_pages, page_digests, write_diff
from enigma.plugin_manager import construct
from enigma.repository import Repository

KEYSTORE_OBJECT = "keys/keystore"
SNAPSHOT_PREFIX = "meta/manifest/"
#: Snapshots kept per provider; older ones are deleted after each new one is stored.
KEEP_SNAPSHOTS = 10
#: A diff holding more than this share of the manifest's pages is stored as a full
#: snapshot instead: a recovery from a diff reads its base as well.
DIFF_LIMIT = 0.5
SNAPSHOT_INFO = b"enigma-manifest-snapshot-v1"
MAGIC = b"ENGM"
FORMAT_VERSION = 1
DIFF_FORMAT_VERSION = 2
COMPRESSION_NONE = 0
COMPRESSION_ZSTD = 1
#: Level 9 with a 16 MiB window: a manifest is mostly random 32-byte chunk ids, each
#: stored four or five times (table, indexes, file lists) megabytes apart. Level 3's
#: match finder misses those; this finds them: a scale-1 benchmark manifest (10 MB) seals
#: to 2.4 instead of 4.7 MB for 0.05 s more, on every provider and for each of the
#: snapshots kept. Decompressing needs the 16 MiB window, far under zstd's default limit.
ZSTD_LEVEL = 9
ZSTD_WINDOW_LOG = 24
_HEADER = struct.Struct(">4sBBQ")
NONCE_SIZE = 12
TAG_SIZE = 16
BLOCK = 1024 * 1024
_FULL_NAME = r"(\d{8}T\d{6}Z)-[0-9a-f]{8}"
_NAME = re.compile(rf"^{_FULL_NAME}(?:\+({_FULL_NAME}))?$")

T = TypeVar("T")


# --------------------------------------------------------------------------- names, keys


def snapshot_key(keys: KeyMaterial) -> bytes:
    """The snapshot sealing key: its own HKDF purpose, from the never-rotating id key."""
    return crypto.derive_key(keys.id_key, SNAPSHOT_INFO)


def new_snapshot_name(now_ns: int, base: str = "") -> str:
    """``<UTC yyyymmddThhmmssZ>-<8 random hex>``, then ``+<base>`` for a diff: sorts by
    time, never collides."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now_ns // 1_000_000_000))
    return f"{stamp}-{secrets.token_hex(4)}" + (f"+{base}" if base else "")


def is_snapshot_name(name: str) -> bool:
    return _NAME.match(name) is not None


def snapshot_second(name: str) -> str:
    """The name's timestamp: snapshots of the same second are ordered by their header."""
    match = _NAME.match(name)
    return match.group(1) if match else ""


def snapshot_base(name: str) -> str:
    """The full snapshot a diff applies to; "" for a full snapshot."""
    match = _NAME.match(name)
    return (match.group(2) or "") if match else ""


def _format_version(name: str) -> int:
    return DIFF_FORMAT_VERSION if snapshot_base(name) else FORMAT_VERSION


def list_snapshots(provider: StorageProvider) -> list[str]:
    """Snapshot names on one provider, newest second first (same-second order: see
    ``snapshot_second``)."""
    names = [key[len(SNAPSHOT_PREFIX):] for key in
             with_retries(f"listing provider '{provider.label}'",
                          lambda: list(provider.list(SNAPSHOT_PREFIX)),
                          provider=provider.label)]
    return sorted((n for n in names if is_snapshot_name(n)), reverse=True)


# --------------------------------------------------------------------------- the format


class _Encrypting:
    """A file-like sink: what zstd writes is encrypted on its way to ``out``."""

    def __init__(self, encryptor: object, out: BinaryIO) -> None:
        self._encryptor = encryptor
        self._out = out

    def write(self, data: bytes) -> int:
        self._out.write(self._encryptor.update(data))  # type: ignore[attr-defined]
        return len(data)


def seal_snapshot(plain: Path, out: BinaryIO, key: bytes, name: str, created_ns: int) -> None:
    """Compress and encrypt ``plain`` (the SQLite copy, or a diff when ``name`` has a
    base) into ``out`` (format above)."""
    import zstandard  # lazy: keeps `enigma --help` fast

    header = _HEADER.pack(MAGIC, _format_version(name), COMPRESSION_ZSTD, created_ns)
    nonce = os.urandom(NONCE_SIZE)
    encryptor = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
    encryptor.authenticate_additional_data(header + name.encode("ascii"))
    out.write(header + nonce)
    size = os.path.getsize(plain)
    # No larger a window than the input: a small diff's compressor would spend more
    # time setting up 16 MiB of tables than compressing.
    window_log = max(zstandard.WINDOWLOG_MIN, min(ZSTD_WINDOW_LOG, size.bit_length()))
    with open(plain, "rb") as source:
        params = zstandard.ZstdCompressionParameters.from_level(
            ZSTD_LEVEL, source_size=size, window_log=window_log)
        zstandard.ZstdCompressor(compression_params=params).copy_stream(
            source, _Encrypting(encryptor, out), size=size, read_size=BLOCK,
            write_size=BLOCK)
    out.write(encryptor.finalize())
    out.write(encryptor.tag)


def open_snapshot(stream: BinaryIO, key: bytes, name: str, db_out: Path,
                  scratch: Path) -> int:
    """Authenticate and decrypt a sealed snapshot into ``scratch``, then (only once the
    tag checked out) decompress it into ``db_out`` (a SQLite copy, or a diff when
    ``name`` has a base); return its creation time in ns.

    ``IntegrityError`` names what is wrong: not a snapshot, truncated, failed
    authentication, or corrupt compressed data.
    """
    import zstandard

    head = stream.read(_HEADER.size + NONCE_SIZE)
    if len(head) < _HEADER.size + NONCE_SIZE:
        raise IntegrityError("truncated (shorter than a snapshot header)")
    magic, version, compression, created_ns = _HEADER.unpack_from(head)
    if magic != MAGIC:
        raise IntegrityError("not an Enigma manifest snapshot (bad magic)")
    if version not in (FORMAT_VERSION, DIFF_FORMAT_VERSION):
        raise IntegrityError(f"snapshot format version {version}; this Enigma reads "
                             f"versions {FORMAT_VERSION} and {DIFF_FORMAT_VERSION} "
                             "(upgrade Enigma?)")
    if version != _format_version(name):
        raise IntegrityError("its format version does not match its name (a full "
                             "snapshot and a diff cannot pose as each other)")
    if compression not in (COMPRESSION_NONE, COMPRESSION_ZSTD):
        raise IntegrityError(f"unknown compression id {compression}")
    decryptor = Cipher(algorithms.AES(key), modes.GCM(head[_HEADER.size:])).decryptor()
    decryptor.authenticate_additional_data(head[:_HEADER.size] + name.encode("ascii"))
    pending = b""
    with _private_open(scratch) as plain:
        while block := stream.read(BLOCK):
            pending += block
            if len(pending) > TAG_SIZE:
                plain.write(decryptor.update(pending[:-TAG_SIZE]))
                pending = pending[-TAG_SIZE:]
        if len(pending) < TAG_SIZE:
            raise IntegrityError("truncated (no room for the authentication tag)")
        try:
            plain.write(decryptor.finalize_with_tag(pending))
        except InvalidTag:
            raise IntegrityError("authentication failed (corrupted, tampered with, or "
                                 "sealed with another repository's keys)") from None
    with open(scratch, "rb") as source, _private_open(db_out) as target:
        if compression == COMPRESSION_NONE:
            while block := source.read(BLOCK):
                target.write(block)
        else:
            try:
                zstandard.ZstdDecompressor().copy_stream(source, target, read_size=BLOCK,
                                                         write_size=BLOCK)
            except zstandard.ZstdError as exc:
                raise IntegrityError(f"corrupt compressed data: {exc}") from None
        target.flush()
        os.fsync(target.fileno())
    return created_ns


@contextmanager
def _private_open(path: Path) -> Iterator[BinaryIO]:
    """A new file only its owner can read (snapshots list every backed-up file name)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0),
                 0o600)
    with os.fdopen(fd, "wb") as fh:
        yield fh


@contextmanager
def scratch_dir(repo: Repository) -> Iterator[Path]:
    """A private temporary directory beside the manifest (same filesystem: renames work;
    never a world-readable /tmp for decrypted manifest copies)."""
    parent = repo.config.db_path.parent
    parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".enigma-recovery-") as tmp:
        yield Path(tmp)


# --------------------------------------------------------------------------- writing


@dataclass
class StoreResult:
    """Where one object (keystore or snapshot) was stored, and where it failed."""

    name: str
    stored: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    #: Old snapshots deleted by rotation, over all providers.
    deleted: int = 0
    #: sha256 of the manifest copy's page digests: tells the gateway whether anything
    #: changed since its last snapshot.
    digest: str = ""
    #: True when nothing was written because the manifest had not changed.
    unchanged: bool = False


def store_keystore(repo: Repository) -> StoreResult | None:
    """Copy the local keystore file to ``keys/keystore`` on every provider; None for key
    providers without a keystore file (vaults keep the keys themselves)."""
    read = getattr(repo.key_provider, "read_bytes", None)
    if read is None:
        return None
    blob = read()
    result = StoreResult(KEYSTORE_OBJECT)

    def put(label: str, provider: StorageProvider) -> None:
        with_retries(f"provider '{label}'", provider.put, KEYSTORE_OBJECT, blob)
        with_retries(f"provider '{label}'", provider.sync)

    _each_provider(repo.providers, put, result)
    return result


def store_snapshot(repo: Repository, *, previous_digest: str | None = None) -> StoreResult:
    """Seal a consistent copy of the manifest, or its diff against the last full snapshot,
    and store it on every provider, then keep only the newest ``KEEP_SNAPSHOTS`` there
    (and the full snapshots they are diffs of). With ``previous_digest`` (a server that
    snapshots periodically; "" the first time) everything is skipped (``unchanged``) when
    the copy's digest equals it."""
    key = snapshot_key(repo.keys)
    database = Path(repo.manifest.path)
    with scratch_dir(repo) as tmp:
        copy = tmp / "manifest.db"
        os.close(os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        repo.manifest.copy_pages_to(copy)
        size, digests = page_digests(copy)
        digest = hashlib.sha256(b"".join(digests)).hexdigest()
        if previous_digest and digest == previous_digest:
            return StoreResult("", digest=digest, unchanged=True)
        diff = _diff_from(repo, database, size, digests)
        created_ns = time.time_ns()
        plain = copy
        if diff is None:
            name = new_snapshot_name(created_ns)
        else:
            base, changed = diff
            name = new_snapshot_name(created_ns, base)
            plain = tmp / "diff"
            with _private_open(plain) as out:
                write_diff(copy, size, len(digests), changed, out)
        sealed = tmp / "sealed"
        with _private_open(sealed) as out:
            seal_snapshot(plain, out, key, name, created_ns)
        result = StoreResult(name, digest=digest)

        def put(label: str, provider: StorageProvider) -> int:
            def upload() -> None:
                with open(sealed, "rb") as stream:
                    provider.put_stream(SNAPSHOT_PREFIX + name, stream)

            with_retries(f"provider '{label}'", upload, provider=label)
            with_retries(f"provider '{label}'", provider.sync)
            return _rotate(label, provider, name)

        deleted = _each_provider(repo.providers, put, result)
        result.deleted = sum(n for n in deleted if isinstance(n, int))
        if diff is None and result.stored:
            # Stored somewhere: the next diff checks that its base is on every provider.
            BaseDigests(name, size, digests).save(database)
        return result


def _diff_from(repo: Repository, database: Path, size: int,
               digests: list[bytes]) -> tuple[str, list[int]] | None:
    """The full snapshot this one can be a diff of, and the pages that differ from it:
    None when there is none, the diff would hold more than ``DIFF_LIMIT`` of the pages, or
    a provider lacks the base (lost to rotation, or down when it was stored)."""
    base = BaseDigests.load(database)
    if base is None or base.page_size != size or not is_snapshot_name(base.name) \
            or snapshot_base(base.name):
        return None
    changed = changed_pages(base.digests, digests)
    if len(changed) > DIFF_LIMIT * len(digests):
        return None
    check = StoreResult(base.name)
    found = _each_provider(
        repo.providers,
        lambda label, provider: with_retries(f"provider '{label}'", provider.exists,
                                             SNAPSHOT_PREFIX + base.name, provider=label),
        check)
    return (base.name, changed) if not check.failed and all(found) else None


def _rotate(label: str, provider: StorageProvider, keep: str) -> int:
    """Delete all but the newest snapshots on one provider and the full snapshots those
    are diffs of; never the one just written."""
    newer = [n for n in list_snapshots(provider) if n != keep]
    kept = {keep, *newer[:KEEP_SNAPSHOTS - 1]}
    kept |= {snapshot_base(n) for n in kept}
    older = [n for n in newer if n not in kept]
    for name in older:
        with_retries(f"provider '{label}'", provider.delete, SNAPSHOT_PREFIX + name)
    return len(older)


def _each_provider(providers: dict[str, StorageProvider],
                   action: Callable[[str, StorageProvider], T], result: StoreResult) -> list[T]:
    """Run ``action`` on every provider at once (a slow or dead one costs its own retry
    budget, not the sum); record successes and one-line failures in ``result``."""
    def run(item: tuple[str, StorageProvider]) -> tuple[str, T | None, str]:
        label, provider = item
        try:
            return label, action(label, provider), ""
        except EnigmaError as exc:  # with_retries already names the provider
            return label, None, str(exc)
        except OSError as exc:
            return label, None, f"provider '{label}': {exc.strerror or exc}"

    values: list[T] = []
    with ThreadPoolExecutor(max_workers=max(1, len(providers))) as pool:
        for label, value, error in pool.map(run, providers.items()):
            if error:
                result.failed[label] = error
            else:
                result.stored.append(label)
                if value is not None:
                    values.append(value)
    return values


# --------------------------------------------------------------------------- before keys


def plain_providers(repo: Repository) -> dict[str, StorageProvider]:
    """The providers that can be built before any key exists: those without ``enc:``
    credentials (which need the keystore). The caller closes them."""
    built: dict[str, StorageProvider] = {}
    for entry in repo.config.providers:
        if any(crypto.is_encrypted(v) for v in entry.options.values()):
            continue
        cls = repo.plugins.get("storage", entry.type)
        index = entry.index if entry.index >= 0 else None
        provider = construct(cls, dict(entry.options),
                             lambda key, i=index: repo.config.where("providers", key, i))
        provider.label = entry.name
        built[entry.name] = repo.limited(provider)
    return built


def remote_keystore_holders(repo: Repository) -> list[str]:
    """Providers (without ``enc:`` credentials) that already hold ``keys/keystore``: a
    repository exists there, and ``enigma init`` must not replace its keys.

    A provider that cannot be asked (missing bucket, bad credentials, unreachable) is
    skipped: init itself reports it a moment later.
    """
    holders = []
    providers = plain_providers(repo)
    try:
        for label, provider in providers.items():
            with suppress(EnigmaError, OSError):
                if provider.exists(KEYSTORE_OBJECT):
                    holders.append(label)
    finally:
        for provider in providers.values():
            with suppress(Exception):
                provider.close()
    return holders
