"""A storage provider that keeps every object as one file in a single flat directory.

Enigma's keys (``chunks/ab/<64 hex>``, ``keys/...``, ``meta/...``) are escaped into file
names: ``/`` becomes ``%2F``, so ``chunks/ab/0f...`` is stored as ``chunks%2Fab%2F0f...``.
No sub-directories are ever created, which suits targets where directories are a nuisance
or cost a round trip each: exFAT drives, SMB shares, sync folders, FUSE-mounted object
stores. The escaping keeps names valid there too:

- only ``a-z 0-9 - _ .`` stand for themselves; every other byte of the key's UTF-8 is
  ``%XX`` with upper-case hex. Upper-case letters are escaped too, so two different keys
  never map to names that differ only in case (safe on case-insensitive file systems);
- a leading or trailing ``.`` is escaped (no hidden files, no ``.``/``..``, no trailing
  dots that Windows drops), as is the first letter of a Windows device name (``con``...);
- names longer than 255 bytes are refused rather than truncated.

Writes go to a ``.tmp-*`` file in the same directory and are renamed over the target, so
readers see the old object, the new one, or none. ``fsync = "always"`` makes every put
durable before it returns; the default ``"batch"`` defers that to ``sync()``, which the
core calls before it records chunks in its manifest.
"""

from __future__ import annotations

import contextlib
import errno
import os
import string
import tempfile
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from enigma.errors import ConfigError, ObjectNotFound, StorageError, TransientStorageError
from enigma.interfaces import StorageProvider

__all__ = ["FlatDirStorage", "key_to_name", "name_to_key"]

#: Characters that stand for themselves in a file name; everything else is %-escaped.
SAFE = frozenset(string.ascii_lowercase + string.digits + "-_.")
#: Prefix of in-flight writes; never a valid escaped name (a leading '.' is escaped).
TMP_PREFIX = ".tmp-"
#: File names longer than this (in bytes) fail on most file systems.
MAX_NAME = 255
#: Names Windows reserves whatever their extension.
RESERVED = frozenset(
    ["con", "prn", "aux", "nul"]
    + [f"com{i}" for i in range(1, 10)]
    + [f"lpt{i}" for i in range(1, 10)]
)
#: Errors worth a retry: the core retries TransientStorageError, not StorageError.
TRANSIENT = frozenset(
    getattr(errno, name)
    for name in ("EAGAIN", "EBUSY", "EINTR", "ETIMEDOUT", "ESTALE", "ECONNRESET")
    if hasattr(errno, name)
)
STREAM_BLOCK = 1024 * 1024
_MISSING = (errno.ENOENT, errno.ENOTDIR)


def _escape(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8"))


def key_to_name(key: str) -> str:
    """The file name for ``key``; ``StorageError`` for keys that cannot be stored."""
    if not isinstance(key, str) or not key:
        raise StorageError(f"flatdir: invalid object key {key!r}")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise StorageError(f"flatdir: invalid object key {key!r}") from None
    parts = [c if c in SAFE else _escape(c) for c in key]
    if parts[0] == ".":
        parts[0] = _escape(".")
    if parts[-1] == ".":
        parts[-1] = _escape(".")
    if key.split(".")[0] in RESERVED:  # only keys without '/' can get here
        parts[0] = _escape(parts[0])
    name = "".join(parts)
    if len(name.encode("ascii")) > MAX_NAME:
        raise StorageError(f"flatdir: key too long for a file name ({len(name)} bytes "
                           f"escaped, limit {MAX_NAME}): {key[:60]}...")
    return name


def name_to_key(name: str) -> str | None:
    """The key a file name stands for, or None if this provider did not write that name."""
    raw = bytearray()
    i = 0
    while i < len(name):
        char = name[i]
        if char == "%":
            digits = name[i + 1 : i + 3]
            if len(digits) != 2 or any(d not in "0123456789ABCDEF" for d in digits):
                return None
            raw.append(int(digits, 16))
            i += 3
        elif char in SAFE:
            raw.append(ord(char))
            i += 1
        else:
            return None
    try:
        key = raw.decode("utf-8")
        canonical = key_to_name(key)
    except (UnicodeDecodeError, StorageError):
        return None
    return key if canonical == name else None  # one key, one name: no aliases


def _reason(exc: OSError) -> str:
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


def _fsync_dir(path: str) -> None:
    """Make a rename in ``path`` durable (where directories can be opened at all)."""
    if os.name == "nt":  # pragma: no cover
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


class FlatDirStorage(StorageProvider):
    """Objects as files in one directory, names escaped from keys (see the module doc)."""

    name = "flatdir"
    description = "One flat directory: exFAT drives, SMB shares, sync folders"

    def __init__(self, *, path: str, fsync: str = "batch") -> None:
        # Every keyword parameter is a config option: `[[providers]] path = "..."`.
        # `path` has no default, so the core reports it missing with file and line.
        if not isinstance(path, str) or not path.strip():
            raise ConfigError("flatdir option 'path' must be a non-empty string")
        if fsync not in ("always", "batch"):
            raise ConfigError(f"flatdir option 'fsync' must be \"always\" or \"batch\", "
                              f"got {fsync!r}")
        self.root = os.path.abspath(os.path.expanduser(path))
        self.fsync_each = fsync == "always"

    def __repr__(self) -> str:
        return f"FlatDirStorage(path={self.root!r})"

    # -- errors -------------------------------------------------------------------------

    def _error(self, action: str, key: str, exc: OSError) -> StorageError:
        """One line naming the directory, the object and the cause; retryable if it is."""
        cls = TransientStorageError if exc.errno in TRANSIENT else StorageError
        return cls(f"flatdir {self.root}: {action} {key}: {_reason(exc)}")

    def _missing_root(self) -> StorageError:
        # A share that is not mounted must not look like an empty repository.
        return StorageError(f"flatdir {self.root}: directory does not exist "
                            "(not mounted? run: enigma init)")

    def _path(self, key: str) -> str:
        return os.path.join(self.root, key_to_name(key))

    # -- writes -------------------------------------------------------------------------

    def _store(self, key: str, blocks: Iterable[bytes | memoryview]) -> None:
        """Temp file beside the target, then rename: a reader never sees half an object."""
        path = self._path(key)
        if not os.path.isdir(self.root):
            raise self._missing_root()
        try:
            fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=self.root)
        except OSError as exc:
            raise self._error("cannot write", key, exc) from exc
        done = False
        try:
            with os.fdopen(fd, "wb") as out:
                for block in blocks:  # errors from the caller's stream pass through
                    try:
                        out.write(block)
                    except OSError as exc:
                        raise self._error("cannot write", key, exc) from exc
                try:
                    out.flush()
                    if self.fsync_each:
                        os.fsync(out.fileno())
                except OSError as exc:
                    raise self._error("cannot write", key, exc) from exc
            try:
                os.replace(tmp, path)
                done = True
                if self.fsync_each:
                    _fsync_dir(self.root)
            except OSError as exc:
                raise self._error("cannot write", key, exc) from exc
        finally:
            if not done:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def put(self, key: str, data: bytes | memoryview) -> None:
        """Write ``data`` atomically (temp file + rename), replacing any older object."""
        self._store(key, (data,))

    def put_stream(self, key: str, stream: BinaryIO) -> None:
        """Copy the stream in 1 MiB blocks, so a large object never sits in memory."""

        def blocks() -> Iterator[bytes]:
            while block := stream.read(STREAM_BLOCK):
                yield block

        self._store(key, blocks())

    def delete(self, key: str) -> None:
        """Remove the object; a missing one is fine (deletes are retried after crashes)."""
        try:
            os.unlink(self._path(key))
        except OSError as exc:
            if exc.errno not in _MISSING:
                raise self._error("cannot delete", key, exc) from exc

    # -- reads --------------------------------------------------------------------------

    def get_stream(self, key: str) -> BinaryIO:
        """The open file itself: the caller reads as much or as little as it needs."""
        try:
            return open(self._path(key), "rb")
        except OSError as exc:
            if exc.errno in _MISSING:
                if not os.path.isdir(self.root):
                    raise self._missing_root() from exc
                raise ObjectNotFound(f"flatdir {self.root}: no such object {key}") from exc
            raise self._error("cannot read", key, exc) from exc

    def get(self, key: str) -> bytes:
        with self.get_stream(key) as fh:
            try:
                return fh.read()
            except OSError as exc:
                raise self._error("cannot read", key, exc) from exc

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Seek and read just the range (restore reads parts of large objects)."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must be >= 0")
        with self.get_stream(key) as fh:
            try:
                fh.seek(offset)
                return fh.read(length)
            except OSError as exc:
                raise self._error("cannot read", key, exc) from exc

    def exists(self, key: str) -> bool:
        path = self._path(key)
        if os.path.isfile(path):
            return True
        if not os.path.isdir(self.root):
            raise self._missing_root()
        return False

    def list(self, prefix: str = "") -> Iterator[str]:
        """Every key starting with ``prefix``; skips temp files and files we did not write."""
        try:
            with os.scandir(self.root) as entries:
                names = [e.name for e in entries if not e.name.startswith(".")]
        except OSError as exc:
            if exc.errno in _MISSING:
                raise self._missing_root() from exc
            raise self._error("cannot list", prefix or "/", exc) from exc
        for name in names:
            key = name_to_key(name)
            if key is not None and key.startswith(prefix):
                yield key

    # -- lifecycle ----------------------------------------------------------------------

    def sync(self) -> None:
        """Flush the puts made since the last sync (``fsync = "batch"``)."""
        if self.fsync_each:
            return
        if not os.path.isdir(self.root):
            raise self._missing_root()
        os.sync()  # portable and simple; a production plugin might use syncfs(2)

    def check(self) -> None:
        """Prove the directory exists and takes writes (what `enigma init`/`status` run)."""
        if not os.path.isdir(self.root):
            raise self._missing_root()
        try:
            fd, probe = tempfile.mkstemp(prefix=TMP_PREFIX + "check-", dir=self.root)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise StorageError(f"flatdir {self.root}: not writable: {_reason(exc)}") from exc

    def create_bucket(self) -> bool:
        """Create the directory (mode 0700) at `enigma init`; True if it was created."""
        if os.path.isdir(self.root):
            return False
        try:
            os.makedirs(self.root, mode=0o700)
        except FileExistsError:
            if not os.path.isdir(self.root):
                raise StorageError(f"flatdir {self.root}: exists and is not a directory") \
                    from None
            return False
        except OSError as exc:
            raise StorageError(f"flatdir {self.root}: cannot create: {_reason(exc)}") from exc
        return True
