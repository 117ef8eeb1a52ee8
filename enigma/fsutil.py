"""Crash-safe file writes shared by the keystore and the local storage plugin.

A reader (or a machine that loses power) must see either the old file or the new one,
never a torn mix, and a secret must never sit in a world-readable file even for an instant.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets

__all__ = ["atomic_write", "fsync_dir"]

_TEMP_ATTEMPTS = 16


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory entry so a just-renamed file survives a crash.

    A no-op on Windows (directories cannot be opened) and on filesystems that refuse
    ``fsync`` on a directory; every other error propagates.
    """
    if os.name == "nt":
        return
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _open_temp(directory: str, base: str, mode: int) -> tuple[str, int]:
    """Create a fresh temp file next to the target, with ``mode`` from the very first moment."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0)
    for _ in range(_TEMP_ATTEMPTS):
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            return tmp, os.open(tmp, flags, mode)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "could not create a unique temporary file", directory)


def atomic_write(
    path: str | os.PathLike[str], data: bytes | bytearray | memoryview, mode: int = 0o600
) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    The temp file lives in the same directory (so ``os.replace`` is a rename, not a copy),
    is created with ``mode`` (minus the umask) via ``O_CREAT|O_EXCL``, written fully,
    fsynced, renamed over ``path``, and the directory is fsynced. On any error the temp
    file is removed and the error re-raised; ``path`` then still holds its old content.
    """
    target = os.fspath(path)
    directory = os.path.dirname(target) or "."
    tmp, fd = _open_temp(directory, os.path.basename(target), mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        fsync_dir(directory)
    except BaseException:
        # After a successful replace the temp name is gone already; nothing to clean.
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
