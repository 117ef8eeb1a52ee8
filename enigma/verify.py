"""``enigma verify``: download, authenticate, decompress and re-hash every chunk of a backup."""

from __future__ import annotations

from dataclasses import dataclass, field

from enigma.chunkstore import ChunkStore
from enigma.errors import IntegrityError
from enigma.repository import Repository


@dataclass
class VerifyResult:
    backup_id: str
    chunks: int = 0
    bytes: int = 0
    bad: dict[bytes, str] = field(default_factory=dict)
    files: dict[bytes, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.bad


def run_verify(repo: Repository, backup_id: str) -> VerifyResult:
    """Check each distinct chunk once; name each bad one and every file that uses it."""
    manifest = repo.manifest
    backup = manifest.get_backup(backup_id)
    store = ChunkStore(repo)
    result = VerifyResult(backup.id)
    for chunk_id in manifest.backup_chunk_ids(backup.id):
        result.chunks += 1
        record = manifest.get_chunk(chunk_id)
        if record is None:
            result.bad[chunk_id] = "not in the manifest"
            continue
        try:
            result.bytes += len(store.get(record))
        except IntegrityError as exc:
            result.bad[chunk_id] = str(exc)
    if result.bad:
        result.files = manifest.files_using_chunks(backup.id, list(result.bad))
    return result
