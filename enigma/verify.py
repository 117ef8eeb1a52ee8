"""``enigma verify``: download, authenticate, decompress and re-hash every chunk of a backup."""

from __future__ import annotations

from dataclasses import dataclass, field

from enigma.chunkstore import ChunkStore
from enigma.errors import IntegrityError
from enigma.manifest import ChunkRecord
from enigma.pipeline import ordered_map
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
    """Check each distinct chunk once, in parallel; name each bad one and the files using it."""
    manifest = repo.manifest
    backup = manifest.get_backup(backup_id)
    store = ChunkStore(repo)
    result = VerifyResult(backup.id)

    def records():
        for chunk_id in manifest.backup_chunk_ids(backup.id):
            record = manifest.get_chunk(chunk_id)
            yield chunk_id, record

    def check(item: tuple[bytes, ChunkRecord | None]) -> int:
        _chunk_id, record = item
        if record is None:
            raise IntegrityError("not in the manifest")
        return len(store.get(record))

    for (chunk_id, _record), future in ordered_map(
            check, records(), size=lambda item: item[1].size if item[1] else 0):
        result.chunks += 1
        try:
            result.bytes += future.result()
        except IntegrityError as exc:
            result.bad[chunk_id] = str(exc)
    if result.bad:
        result.files = manifest.files_using_chunks(backup.id, list(result.bad))
    return result
