"""Local-disk storage: objects are files under a root directory (a local disk or a NAS mount).

Keys map one-to-one to paths (``chunks/ab/<hex>`` -> ``<root>/chunks/ab/<hex>``). Every
write goes to a ``.tmp-*`` file in the target's directory and is renamed over the target:
a reader, or a killed process, sees the old object, the new one, or none, never a torn one.

Durability has two modes (option ``fsync``):

- ``"always"``: each put fsyncs the file before the rename and the directory after it.
- ``"batch"`` (default): puts skip the fsyncs and ``sync()`` makes everything durable with
  one ``syncfs(2)``. The core calls ``sync()`` before it records chunks in the manifest, so
  the manifest still only ever points at durable chunks, and a backup of 20,000 small files
  costs one flush instead of 20,000 (0.28 ms each on this machine's ext4: 5.6 s). After a
  power loss an object written since the last ``sync()`` may be torn; the manifest never
  references it, gc removes it, and a re-run backup rewrites it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from enigma.errors import ConfigError, ObjectNotFound, StorageError
from enigma.interfaces import StorageProvider

__all__ = ["STORAGE_PROVIDERS", "LocalStorage"]

#: Prefix of in-flight temp files; ``list`` skips them and keys may not use it.
TMP_PREFIX = ".tmp-"
#: Block size for ``put_stream``: large enough for throughput, small enough for memory.
STREAM_BLOCK = 1024 * 1024

_MISSING = (errno.ENOENT, errno.ENOTDIR, errno.EISDIR)


def _reason(exc: OSError) -> str:
    """``No space left on device`` -> ``no space left on device``: the message's tail."""
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """``os.write`` may write less than asked (signals, huge buffers): loop until done."""
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(path: str) -> None:
    """Make a rename or a new entry in ``path`` durable; no-op where dirs can't be opened."""
    if os.name == "nt":  # pragma: no cover - Windows has no directory fsync
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


class LocalStorage(StorageProvider):
    """Objects as files in a directory; atomic puts, streaming gets, no extra dependencies."""

    name = "local"
    description = "A local directory or mounted network share"
    upload_concurrency = 2  # a disk gains nothing from more; threads only add GIL hand-offs

    def __init__(
        self,
        *,
        path: str | None = None,
        bucket: str | None = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        path_style: bool | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        fsync: str = "batch",
        shared: bool = False,
    ) -> None:
        # ``bucket`` doubles as the directory (the seed config gives every provider one);
        # the S3-style options are accepted and ignored for the same reason.
        del region, endpoint_url, path_style, access_key, secret_key
        root = path or bucket
        if not root:
            raise ConfigError("Local storage needs 'path' (or 'bucket')")
        if not isinstance(root, str | os.PathLike):
            raise ConfigError("Local storage 'path' must be a string")
        self.root = os.path.abspath(os.path.expanduser(os.fspath(root)))
        if fsync not in ("always", "batch"):
            raise ConfigError("Local storage 'fsync' must be \"always\" or \"batch\"")
        self.fsync_each = fsync == "always"
        if not isinstance(shared, bool):
            raise ConfigError("Local storage 'shared' must be true or false")
        #: Declared reachable by every node of a cluster (an NFS mount, a shared volume):
        #: Raft refuses a node-local directory, whose chunks the other nodes cannot read.
        self.shared = shared
        self._known_dirs: set[str] = set()
        # Temp names: a random stem per instance and a counter (2.6 % of a small-file
        # backup went to one os.urandom call per object); O_EXCL still guards them.
        self._tmp_stem = f"{TMP_PREFIX}{os.urandom(6).hex()}-"
        self._tmp_serial = itertools.count()

    def __repr__(self) -> str:
        return f"LocalStorage(path={self.root!r})"

    # -- keys and errors ------------------------------------------------------------------

    def _error(self, action: str, key: str, exc: OSError) -> StorageError:
        """One line naming the root, the cause and the object: what a user needs to act."""
        return StorageError(f"local storage {self.root}: {action} {key}: {_reason(exc)}")

    def _path(self, key: str) -> str:
        """Map a key to a path under the root, refusing anything that could escape it."""
        if not isinstance(key, str) or not key:
            raise StorageError(f"local storage: invalid object key {key!r}")
        parts = key.split("/")
        if (
            key.startswith("/")
            or "\\" in key
            or "\x00" in key
            or any(p in ("", ".", "..") or p.startswith(TMP_PREFIX) for p in parts)
            or (len(key) > 1 and key[1] == ":")  # a Windows drive letter
        ):
            raise StorageError(f"local storage: invalid object key {key!r}")
        return os.path.join(self.root, *parts)

    def _ensure_dir(self, directory: str) -> None:
        """Create missing directories below the root, fsyncing each parent after a mkdir.

        The root itself is never created here (``create_bucket`` does that): if a NAS is
        not mounted, writing into the bare mount point would fill the local disk instead.
        """
        if directory in self._known_dirs or os.path.isdir(directory):
            self._known_dirs.add(directory)  # never removed by us: cache the answer
            return
        missing: list[str] = []
        current = directory
        while current != self.root and not os.path.isdir(current):
            missing.append(current)
            current = os.path.dirname(current)
        if current == self.root and not os.path.isdir(self.root):
            raise StorageError(f"local storage {self.root}: directory does not exist")
        for path in reversed(missing):
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                if not os.path.isdir(path):
                    raise
                continue  # another thread made it; it fsyncs the parent
            if self.fsync_each:
                _fsync_dir(os.path.dirname(path))

    # -- writes ---------------------------------------------------------------------------

    def _store(self, key: str, blocks: Iterable[bytes | bytearray | memoryview]) -> None:
        """Write ``blocks`` to a temp file beside the target, fsync, rename, fsync the dir.

        Errors from ``blocks`` itself (the caller's stream) propagate unchanged; errors
        from the disk become ``StorageError``. Either way the temp file is removed.
        """
        path = self._path(key)
        directory = os.path.dirname(path)
        try:
            self._ensure_dir(directory)
            tmp = os.path.join(directory, f"{self._tmp_stem}{next(self._tmp_serial)}")
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            try:
                fd = os.open(tmp, flags, 0o600)
            except FileNotFoundError:  # the directory went away behind our cache
                self._known_dirs.discard(directory)
                self._ensure_dir(directory)
                fd = os.open(tmp, flags, 0o600)
        except OSError as exc:
            raise self._error("cannot write", key, exc) from exc
        done = False
        try:
            for block in blocks:
                try:
                    _write_all(fd, block)
                except OSError as exc:
                    raise self._error("cannot write", key, exc) from exc
            try:
                if self.fsync_each:
                    os.fsync(fd)
                os.close(fd)
                fd = -1
                os.replace(tmp, path)
                done = True
                if self.fsync_each:
                    _fsync_dir(directory)
            except OSError as exc:
                raise self._error("cannot write", key, exc) from exc
        finally:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
            if not done:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def put(self, key: str, data: bytes | memoryview) -> None:
        """Store ``data`` atomically, replacing any existing object."""
        self._store(key, (data,))

    def put_stream(self, key: str, stream: BinaryIO) -> None:
        """Store a stream in 1 MiB blocks, so a large object never sits in memory whole."""

        def blocks() -> Iterator[bytes]:
            while block := stream.read(STREAM_BLOCK):
                yield block

        self._store(key, blocks())

    # -- reads ----------------------------------------------------------------------------

    def _open(self, key: str, buffering: int = -1) -> BinaryIO:
        path = self._path(key)
        try:
            return open(path, "rb", buffering=buffering)
        except OSError as exc:
            if exc.errno in _MISSING:
                raise ObjectNotFound(f"local storage {self.root}: no such object {key}") from exc
            raise self._error("cannot read", key, exc) from exc

    def get(self, key: str) -> bytes:
        """Return the whole object, or raise ``ObjectNotFound``."""
        with self._open(key) as fh:
            try:
                return fh.read()
            except OSError as exc:
                raise self._error("cannot read", key, exc) from exc

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Read only the requested bytes (fewer, or none, past the end)."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must be >= 0")
        # Unbuffered, one pread: a restore reads every small packed chunk this way.
        with self._open(key, buffering=0) as fh:
            try:
                return os.pread(fh.fileno(), length, offset)
            except OSError as exc:
                raise self._error("cannot read", key, exc) from exc

    def get_stream(self, key: str) -> BinaryIO:
        """An open file: the caller reads it in blocks and closes it."""
        return self._open(key)

    def exists(self, key: str) -> bool:
        """Whether a regular file holds ``key`` (a directory of that name is not an object)."""
        try:
            return stat.S_ISREG(os.stat(self._path(key)).st_mode)
        except OSError as exc:
            if exc.errno in _MISSING:
                return False
            raise self._error("cannot stat", key, exc) from exc

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is fine. Empty directories stay (puts may race)."""
        try:
            os.unlink(self._path(key))
        except OSError as exc:
            if exc.errno in (*_MISSING, errno.EPERM) and not self.exists(key):
                return  # EPERM/EISDIR: a directory by that name, which is no object
            raise self._error("cannot delete", key, exc) from exc

    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield every key starting with ``prefix``, walking only the directories that can match."""
        if not isinstance(prefix, str):
            raise StorageError(f"local storage: invalid prefix {prefix!r}")
        base, _, _ = prefix.rpartition("/")
        start = self._path(base) if base else self.root
        if not os.path.isdir(self.root):
            raise StorageError(f"local storage {self.root}: directory does not exist")
        stack = [(start, f"{base}/" if base else "")]
        while stack:
            directory, key_prefix = stack.pop()
            try:
                with os.scandir(directory) as entries:
                    found = list(entries)
            except OSError as exc:
                if exc.errno in _MISSING:
                    continue
                raise self._error("cannot list", key_prefix or "/", exc) from exc
            for entry in found:
                if entry.name.startswith(TMP_PREFIX):
                    continue
                key = key_prefix + entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        sub = key + "/"
                        if sub.startswith(prefix) or prefix.startswith(sub):
                            stack.append((entry.path, sub))
                    elif key.startswith(prefix) and entry.is_file():
                        yield key
                except OSError as exc:  # vanished between scandir and stat: skip it
                    if exc.errno not in _MISSING:
                        raise self._error("cannot list", key, exc) from exc

    # -- lifecycle ------------------------------------------------------------------------

    def sync(self) -> None:
        """Make every put so far durable: one ``syncfs`` of the root's filesystem."""
        if self.fsync_each:
            return
        try:
            fd = os.open(self.root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as exc:
            raise StorageError(f"local storage {self.root}: cannot sync: {_reason(exc)}") from exc
        try:
            if _syncfs is None or _syncfs(fd) != 0:
                os.sync()  # no syncfs(2) here (or it failed): flush every filesystem
        finally:
            os.close(fd)

    def check(self) -> None:
        """Prove the root exists and takes writes (a real probe: access() lies for root)."""
        if not os.path.isdir(self.root):
            raise StorageError(f"local storage {self.root}: directory does not exist")
        try:
            fd, probe = tempfile.mkstemp(prefix=TMP_PREFIX + "check-", dir=self.root)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise StorageError(f"local storage {self.root}: not writable: {_reason(exc)}") from exc

    def create_bucket(self) -> bool:
        """Create the root (mode 0700); True if it was created now."""
        try:
            os.makedirs(self.root, mode=0o700)
        except FileExistsError:
            if not os.path.isdir(self.root):
                raise StorageError(
                    f"local storage {self.root}: exists and is not a directory"
                ) from None
            return False
        except OSError as exc:
            raise StorageError(f"local storage {self.root}: cannot create: {_reason(exc)}") from exc
        with contextlib.suppress(OSError):
            _fsync_dir(os.path.dirname(self.root))
        return True


def _load_syncfs():  # type: ignore[no-untyped-def]
    """``syncfs(2)`` from libc where it exists (Linux); None elsewhere."""
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs()

STORAGE_PROVIDERS = [LocalStorage]
