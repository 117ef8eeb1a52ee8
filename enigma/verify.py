"""``enigma verify``: download, authenticate, decompress and re-hash every chunk of a backup."""

from __future__ import annotations

from dataclasses import dataclass, field

from enigma.chunkstore import ChunkStore
from enigma.errors import IntegrityError
from enigma.manifest import ChunkRecord
from enigma.pipeline import ordered_map
from enigma.progress import NO_PROGRESS, Progress, TotalsScanner
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


def run_verify(repo: Repository, backup_id: str, *,
               progress: Progress = NO_PROGRESS) -> VerifyResult:
    """Check each distinct chunk once, in parallel; name each bad one and the files using it.

    ``progress`` counts chunks (files) and their plaintext bytes; the chunk total is
    counted beside the check.
    """
    manifest = repo.manifest
    backup = manifest.get_backup(backup_id)
    store = ChunkStore(repo)
    result = VerifyResult(backup.id)
    with progress.running("verify"), TotalsScanner(
            progress, lambda: (0 for _ in manifest.backup_chunk_ids(backup.id)),
            count_bytes=False):
        _verify(repo, store, backup.id, result, progress)
    if result.bad:
        result.files = manifest.files_using_chunks(backup.id, list(result.bad))
    return result


def _verify(repo: Repository, store: ChunkStore, backup_id: str, result: VerifyResult,
            progress: Progress) -> None:
    manifest = repo.manifest

    def records():
        for chunk_id in manifest.backup_chunk_ids(backup_id):
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
            size = future.result()
        except IntegrityError as exc:
            result.bad[chunk_id] = str(exc)
            progress.error(chunk_id.hex(), str(exc))
            progress.advance(files=1)
        else:
            result.bytes += size
            progress.advance(files=1, bytes=size)
