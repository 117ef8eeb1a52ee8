"""``enigma forget`` and ``enigma gc``: drop backups, then delete chunks nothing references.

The manifest row of a chunk is deleted before its object, so a crash in between leaves an
orphan object (found and removed by the next gc), never a manifest row pointing at nothing.
A pack goes when no row points into it; a pack with both used and unreferenced chunks is
replaced by a new pack of the used ones (``repack``), like restic's prune.

Why deleting is safe: a writer can reference a chunk gc would delete only between storing
or dedup-matching it and committing the reference (a backup's files, a gateway PUT's
object). Backups and gateway writes hold the repository lock shared for that whole
window; gc holds it exclusively (never waiting: whoever comes second is refused), so it
sees no such window open. forget only drops references, under the shared lock. The lock
is one machine's ``flock`` on ``<config dir>/lock``: a Raft cluster cannot use it, so gc
refuses to run there.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from enigma.chunkstore import ChunkStore, chunk_key, stored_chunks, stored_packs, with_retries
from enigma.config import DEFAULT_PACK_SIZE_MIB
from enigma.errors import ConfigError, EnigmaError
from enigma.lock import repository_lock
from enigma.manifest import BackupRecord, ChunkRecord, Manifest
from enigma.packer import Member, Packer
from enigma.packs import pack_key
from enigma.progress import NO_PROGRESS, Progress
from enigma.repository import Repository
from enigma.retention import GroupPlan, Policy, plan


@dataclass
class GcResult:
    dry_run: bool
    stale_backups: list[str] = field(default_factory=list)
    chunks: int = 0
    bytes: int = 0
    orphans: int = 0
    #: Pack objects deleted because every chunk in them was unreferenced.
    packs: int = 0
    #: Packs holding unreferenced chunks beside used ones, rewritten with only the used.
    repacked: int = 0


def forget_backups(repo: Repository, backup_ids: list[str]) -> list[str]:
    """Delete backups from the manifest (their chunks become garbage for gc)."""
    records = [repo.manifest.get_backup(b) for b in backup_ids]  # all-or-nothing lookup
    with repository_lock(repo.config.config_dir, exclusive=False):
        for record in records:
            repo.manifest.delete_backup(record.id)
    return [r.id for r in records]


def forget_by_policy(repo: Repository, policy: Policy, *, dry_run: bool = False,
                     now: float | None = None) -> list[GroupPlan]:
    """Apply a retention policy (``enigma.retention``): delete what it does not keep.

    The plan is made and carried out under the shared lock, so gc cannot run in between;
    running backups are never judged, so one that is still being written is never deleted.
    """
    manifest = repo.manifest
    with repository_lock(repo.config.config_dir, exclusive=False):
        groups = plan(manifest.list_backups(), policy,
                      now=time.time() if now is None else now)
        if not dry_run:
            for group in groups:
                for decision in group.remove:
                    manifest.delete_backup(decision.backup.id)
    return groups


def require_gc_allowed(repo: Repository) -> None:
    """Refuse gc where the repository lock cannot see every writer (a Raft cluster)."""
    if repo.manifest.replicated:
        # The repository lock is per machine: it cannot see uploads in flight on the
        # other nodes, whose chunks gc would take for orphans.
        raise ConfigError("enigma gc does not run on a Raft cluster yet: it cannot see "
                          "uploads in flight on other nodes (forget works; gc later)")


def run_gc(repo: Repository, *, dry_run: bool = False,
           progress: Progress = NO_PROGRESS) -> GcResult:
    """Remove interrupted backups, unreferenced chunks and orphan objects.

    ``progress`` counts objects deleted (files) and the stored bytes of the unreferenced
    chunks among them (an orphan's size is not known without asking for it).
    """
    require_gc_allowed(repo)
    result = GcResult(dry_run)
    with repository_lock(repo.config.config_dir, exclusive=True), progress.running("gc"):
        _collect(repo, result, dry_run, progress)
    return result


def _collect(repo: Repository, result: GcResult, dry_run: bool, progress: Progress) -> None:
    manifest = repo.manifest
    # With the exclusive lock held no backup runs, so "running" ones were interrupted.
    result.stale_backups = [b.id for b in manifest.list_backups() if b.status == "running"]
    if not dry_run:
        for backup_id in result.stale_backups:
            manifest.delete_backup(backup_id)
        manifest.drop_unlinked_dirs()  # what forget left: no backup can link them now
    garbage = manifest.unreferenced_chunks(counting_unlinked=dry_run)
    result.chunks = len(garbage)
    result.bytes = sum(c.stored_size * len(c.providers) for c in garbage)
    dead_packs = _dead_packs(manifest, garbage)
    partly_dead = {c.pack: c.providers for c in garbage
                   if c.pack is not None and c.pack not in dead_packs}
    result.packs = len(dead_packs)
    objects = sum(len(c.providers) for c in garbage if c.pack is None) + sum(
        len(labels) for packs in (dead_packs, partly_dead) for labels in packs.values())
    if not dry_run:  # a dry run deletes nothing: no totals to show progress against
        progress.set_totals(files=objects, bytes=result.bytes)
    if not dry_run and garbage:
        manifest.delete_chunks([c.id for c in garbage])
        for record in garbage:
            if record.pack is None:
                _delete(repo, record.providers, chunk_key(record.id), progress)
            progress.advance(bytes=record.stored_size * len(record.providers))
        # A pack goes once no record points into it (delete_chunks keeps referenced ones).
        still_used = manifest.pack_chunk_counts(dead_packs)
        for pack_id, labels in dead_packs.items():
            if pack_id not in still_used:
                _delete(repo, labels, pack_key(pack_id), progress)
    if dry_run:
        result.repacked = len(partly_dead)
    elif partly_dead:
        result.repacked = repack(repo, partly_dead, progress)
    for label, provider in repo.providers.items():
        progress.current_file(f"listing provider '{label}'")
        candidates = stored_chunks(label, provider)
        known = manifest.known_chunks(candidates)
        orphans = [key for chunk_id, key in candidates.items() if chunk_id not in known]
        packs = stored_packs(label, provider)
        used = manifest.pack_chunk_counts(packs)
        orphans += [key for pack_id, key in packs.items() if pack_id not in used]
        result.orphans += len(orphans)
        if dry_run:
            continue
        objects += len(orphans)
        progress.set_totals(files=objects)
        for key in orphans:
            progress.current_file(key)
            with_retries(f"deleting from provider '{label}'", provider.delete, key)
            progress.advance(files=1)
    progress.current_file(None)


def repack(repo: Repository, packs: dict[bytes, tuple[str, ...]],
           progress: Progress = NO_PROGRESS) -> int:
    """Copy the used chunks of ``packs`` into new packs and delete the old ones, so the
    bytes of unreferenced chunks are freed; returns how many packs were replaced.

    Each chunk is read the way restore reads it (AES-GCM checked, other copies tried), so a
    damaged copy is never spread over the new pack's providers; a pack with a chunk that
    no copy holds soundly is left as it is (``enigma repair`` is for that). Order: new packs
    stored and synced, then the records moved in one operation, then the old packs
    deleted; a crash leaves orphans for the next gc, never a record without its bytes.
    """
    store = ChunkStore(repo)
    if store.keys.write_only:
        return 0  # it cannot authenticate what it would copy
    target = repo.config.pack_size or DEFAULT_PACK_SIZE_MIB * 1024 * 1024
    movable: list[tuple[ChunkRecord, bytes]] = []
    replaced: list[tuple[bytes, tuple[str, ...]]] = []
    by_pack: dict[bytes, list[ChunkRecord]] = {}
    for record in repo.manifest.chunks_in_packs(packs):
        by_pack.setdefault(record.pack, []).append(record)  # type: ignore[arg-type]
    for pack_id, records in by_pack.items():
        progress.current_file(pack_key(pack_id))
        try:
            sealed = [(record, store.fetch_sealed(record)) for record in records]
        except EnigmaError:
            continue
        labels = tuple(sorted(packs[pack_id]))
        if any(tuple(sorted(record.providers)) != labels for record in records):
            continue  # repair moved some of them: leave the pack to a later gc
        movable += sealed
        replaced.append((pack_id, labels))

    def put(labels: tuple[str, ...], key: str, blob: bytes, _members: list[Member]) -> None:
        for label in labels:
            with_retries(f"storing on provider '{label}'", repo.providers[label].put,
                         key, blob)

    # The pipeline's packer, shipping on this thread: one pack per set of providers.
    packer = Packer(store.sealer.seal, put, target=target)
    moves: list[tuple[bytes, bytes, bytes, int]] = []
    for record, sealed_chunk in movable:
        old = record.pack or b""
        packer.add(record, sealed_chunk, _RAISE)  # sets the record's new pack and offset
        moves.append((record.id, old, record.pack or b"", record.offset))
    packer.flush()
    written = {label for _pack_id, labels in replaced for label in labels}
    for label in sorted(written):
        with_retries(f"syncing provider '{label}'", repo.providers[label].sync)
    if moves:
        repo.manifest.move_chunks(moves)
    for pack_id, labels in replaced:
        _delete(repo, labels, pack_key(pack_id), progress)
    progress.current_file(None)
    return len(replaced)


class _Raise:
    """A packed chunk's waiter for repack, whose puts run on the calling thread: a pack
    that cannot be built raises there too, before any record moves."""

    def stored(self) -> None:
        pass

    def failed(self, exc: BaseException) -> None:
        raise exc


_RAISE = _Raise()


def _dead_packs(manifest: Manifest, garbage: list[ChunkRecord]) -> dict[bytes, tuple[str, ...]]:
    """Packs every chunk of which is garbage, with the providers holding them."""
    garbage_in: Counter[bytes] = Counter(c.pack for c in garbage if c.pack is not None)
    labels = {c.pack: c.providers for c in garbage if c.pack is not None}
    counts = manifest.pack_chunk_counts(garbage_in)
    return {pack_id: labels[pack_id] for pack_id, n in garbage_in.items()
            if counts.get(pack_id, 0) <= n}


def _delete(repo: Repository, labels: tuple[str, ...], key: str, progress: Progress) -> None:
    """Delete one object from each of ``labels`` still configured."""
    for label in labels:
        provider = repo.providers.get(label)
        if provider is not None:
            with_retries(f"deleting from provider '{label}'", provider.delete, key)
        progress.advance(files=1)


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def plan_lines(groups: list[GroupPlan], *, dry_run: bool) -> Iterator[str]:
    """``forget``'s report: per group, what is kept (and why) and what is removed."""
    removed = "would remove" if dry_run else "removed"
    for group in groups:
        yield f"backups of {', '.join(group.sources)}:"
        if group.keep:
            yield f"  keep {len(group.keep)}:"
            for d in group.keep:
                yield f"    {d.backup.id}  {_when(d.backup.created_at)}  {', '.join(d.reasons)}"
        if group.remove:
            yield f"  {removed} {len(group.remove)}:"
            for d in group.remove:
                yield f"    {d.backup.id}  {_when(d.backup.created_at)}"
        for b in group.untouched:
            yield f"  left alone ({b.status}): {b.id}  {_when(b.created_at)}"


def plan_json(groups: list[GroupPlan]) -> list[dict[str, Any]]:
    """``forget --json``: the same report as data."""
    def row(backup: BackupRecord, **extra: Any) -> dict[str, Any]:
        return {"id": backup.id, "created_at": backup.created_at, "status": backup.status,
                **extra}

    return [{"sources": list(g.sources),
             "keep": [row(d.backup, reasons=d.reasons) for d in g.keep],
             "remove": [row(d.backup) for d in g.remove],
             "untouched": [row(b) for b in g.untouched]} for g in groups]
