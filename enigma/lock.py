"""A repository lock: backups share it, gc takes it alone (borg/restic do the same)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from enigma.errors import EnigmaError


class RepositoryBusy(EnigmaError):
    """Another enigma process holds the lock in a conflicting mode."""


@contextmanager
def repository_lock(config_dir: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold ``<config_dir>/lock`` shared (backup) or exclusive (gc); never wait silently."""
    path = config_dir / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            doing = "a backup is running" if exclusive else "gc is running"
            raise RepositoryBusy(f"repository {config_dir} is busy ({doing}); "
                                 "try again when it finishes") from None
        yield
    finally:
        os.close(fd)
