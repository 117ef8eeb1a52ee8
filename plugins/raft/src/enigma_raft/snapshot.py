"""Snapshots for log compaction: pysyncobj's bookkeeping plus a consistent SQLite copy.

pysyncobj compacts its log by asking for a "full dump" and sends that file to a node whose
log starts after the leader's (a new node, or one down past a compaction). Our state is
the SQLite manifest, so the dump is one file: a header, pysyncobj's own tuple (last
applied entries and the member set), then the database as the SQLite backup API copies it
between two applied entries.
"""

from __future__ import annotations

import os
import pickle
import shutil
import struct
from pathlib import Path
from typing import Any

from enigma.manifest import Manifest

MAGIC = b"ENIGMA-RAFT-SNAPSHOT-1\n"
_LENGTH = struct.Struct(">Q")


class SnapshotFile:
    """The ``serializer`` / ``deserializer`` pair pysyncobj calls for ``manifest``."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest

    def serialize(self, path: str, raft_data: Any) -> None:
        """Write ``path``: called on pysyncobj's thread between two applied entries."""
        database = path + ".db"
        try:
            self.manifest.snapshot_to(database)
            meta = pickle.dumps(raft_data, protocol=pickle.HIGHEST_PROTOCOL)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out, open(database, "rb") as copy:
                out.write(MAGIC + _LENGTH.pack(len(meta)) + meta)
                shutil.copyfileobj(copy, out, 1024 * 1024)
                out.flush()
                os.fsync(out.fileno())
        finally:
            _unlink(database)

    def deserialize(self, path: str) -> Any:
        """Install the snapshot at ``path`` into the manifest; return pysyncobj's tuple.

        The file came from this node's own compaction or from the leader over the
        authenticated transport, so unpickling its header is as safe as the log itself.
        """
        database = path + ".restore.db"
        try:
            with open(path, "rb") as source:
                if source.read(len(MAGIC)) != MAGIC:
                    raise ValueError(f"{path} is not an enigma Raft snapshot")
                (length,) = _LENGTH.unpack(source.read(_LENGTH.size))
                meta = pickle.loads(source.read(length))
                fd = os.open(database, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(source, out, 1024 * 1024)
            self.manifest.restore_from(database)
        finally:
            _unlink(database)
        return meta


def _unlink(path: str) -> None:
    Path(path).unlink(missing_ok=True)
