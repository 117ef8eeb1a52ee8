"""``enigma forget`` and ``enigma gc``: drop backups, then delete chunks nothing references.

The manifest row of a chunk is deleted before its object, so a crash in between leaves an
orphan object (found and removed by the next gc), never a manifest row pointing at nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from enigma.chunkstore import chunk_id_from_key, chunk_key, with_retries
from enigma.errors import ConfigError
from enigma.lock import repository_lock
from enigma.repository import Repository


@dataclass
class GcResult:
    dry_run: bool
    stale_backups: list[str] = field(default_factory=list)
    chunks: int = 0
    bytes: int = 0
    orphans: int = 0


def forget_backups(repo: Repository, backup_ids: list[str]) -> list[str]:
    """Delete backups from the manifest (their chunks become garbage for gc)."""
    records = [repo.manifest.get_backup(b) for b in backup_ids]  # all-or-nothing lookup
    with repository_lock(repo.config.config_dir, exclusive=False):
        for record in records:
            repo.manifest.delete_backup(record.id)
    return [r.id for r in records]


def run_gc(repo: Repository, *, dry_run: bool = False) -> GcResult:
    """Remove interrupted backups, unreferenced chunks and orphan objects."""
    manifest = repo.manifest
    if manifest.replicated:
        # The repository lock is per machine: it cannot see uploads in flight on the
        # other nodes, whose chunks gc would take for orphans.
        raise ConfigError("enigma gc does not run on a Raft cluster yet: it cannot see "
                          "uploads in flight on other nodes (forget works; gc later)")
    result = GcResult(dry_run)
    with repository_lock(repo.config.config_dir, exclusive=True):
        # With the exclusive lock held no backup runs, so "running" ones were interrupted.
        result.stale_backups = [b.id for b in manifest.list_backups() if b.status == "running"]
        if not dry_run:
            for backup_id in result.stale_backups:
                manifest.delete_backup(backup_id)
        garbage = manifest.unreferenced_chunks()
        result.chunks = len(garbage)
        result.bytes = sum(c.stored_size * len(c.providers) for c in garbage)
        if not dry_run and garbage:
            manifest.delete_chunks([c.id for c in garbage])
            for record in garbage:
                for label in record.providers:
                    provider = repo.providers.get(label)
                    if provider is not None:
                        with_retries(f"deleting from provider '{label}'", provider.delete,
                                     chunk_key(record.id))
        for label, provider in repo.providers.items():
            candidates = {}
            for key in provider.list("chunks/"):
                chunk_id = chunk_id_from_key(key)
                if chunk_id is not None:
                    candidates[chunk_id] = key
            known = manifest.known_chunks(candidates)
            for chunk_id, key in candidates.items():
                if chunk_id in known:
                    continue
                result.orphans += 1
                if not dry_run:
                    with_retries(f"deleting from provider '{label}'", provider.delete, key)
    return result
