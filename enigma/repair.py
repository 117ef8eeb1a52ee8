"""``enigma repair``: put back every missing or damaged copy or shard; and the redundancy
figures ``enigma status`` shows.

Repair reads each chunk's objects from all of its providers and judges each on its own
(every object is self-describing): a whole copy must pass AES-GCM, a shard must be sound
(CRC) and belong to the encoding that decodes and authenticates. What is missing or bad is
rewritten in place from what is sound; encoding is deterministic, so a rebuilt shard is
byte-identical to the lost one. A provider gone from the config is replaced by a healthy
one that does not hold the chunk yet, and the manifest learns the new providers only after
the objects are stored and synced. A chunk with too few sound objects is reported, never
made worse.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from enigma import erasure
from enigma.chunkstore import ChunkAssembler, ChunkStore, Fetched, with_retries
from enigma.errors import ConfigError, EnigmaError, IntegrityError, StorageError
from enigma.manifest import ChunkRecord
from enigma.pipeline import ordered_map
from enigma.plugins.distribution import redundancy_of
from enigma.progress import NO_PROGRESS, Progress
from enigma.repository import Repository

#: Chunks whose new providers go to the manifest in one operation.
UPDATE_BATCH = 500


@dataclass
class ChunkPlan:
    """What one chunk needs: objects to (re)write, and its new providers if they change."""

    record: ChunkRecord
    writes: list[tuple[str, bytes]] = field(default_factory=list)
    #: Providers that replace ones gone from the config (written like the others).
    added: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    error: str = ""
    #: A packed chunk being rewritten as whole objects on all its providers (a pack is
    #: shared with other chunks, so it is never rewritten in place).
    unpack: bool = False

    @property
    def providers(self) -> list[str]:
        kept = [label for label in self.record.providers if label not in self.dropped]
        return kept + self.added


@dataclass
class RepairResult:
    """Counts for the report; ``failed`` maps a chunk id (hex) to why it is not whole."""

    dry_run: bool
    chunks: int = 0
    healthy: int = 0
    repaired: int = 0
    objects: int = 0
    moved: int = 0
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def run_repair(repo: Repository, *, dry_run: bool = False,
               progress: Progress = NO_PROGRESS) -> RepairResult:
    """Check every chunk on every provider it lists and rebuild what is missing or bad.

    ``progress`` counts chunks checked (files) and their stored size (bytes).
    """
    store = ChunkStore(repo)
    with progress.running("repair"):
        return _repair(repo, store, dry_run, progress)


def _repair(repo: Repository, store: ChunkStore, dry_run: bool,
            progress: Progress) -> RepairResult:
    progress.current_file("checking the providers")
    healthy = _healthy_providers(repo)
    for label in repo.providers:
        if label not in healthy:
            store.mark_failing(label)
    count, _plain, stored = repo.manifest.chunk_totals()
    progress.current_file(None)
    progress.set_totals(files=count, bytes=stored)
    result = RepairResult(dry_run)
    updates: list[tuple[bytes, list[str]]] = []
    written: set[str] = set()

    def work(record: ChunkRecord) -> ChunkPlan:
        plan = plan_chunk(store, record, healthy)
        if not dry_run:
            apply_plan(store, plan)
        return plan

    for record, future in ordered_map(work, repo.manifest.iter_chunks(),
                                      size=lambda r: r.stored_size * 2):
        result.chunks += 1
        progress.advance(files=1, bytes=record.stored_size)
        try:
            plan = future.result()
        except EnigmaError as exc:
            result.failed[record.id.hex()] = str(exc)
            progress.error(record.id.hex(), str(exc))
            continue
        if not plan.problems and not plan.error:
            result.healthy += 1
            continue
        done = [label for label, _blob in plan.writes]
        written.update(done)
        result.objects += len(done)
        if plan.added:
            result.moved += 1
        if plan.added or plan.unpack:
            updates.append((record.id, plan.providers))
        if plan.error:
            result.failed[record.id.hex()] = plan.error
            progress.error(record.id.hex(), plan.error)
        else:
            result.repaired += 1
    if not dry_run:
        for label in sorted(written):
            provider = repo.providers[label]
            with_retries(f"syncing provider '{label}'", provider.sync)
        for start in range(0, len(updates), UPDATE_BATCH):
            repo.manifest.set_chunk_providers(updates[start:start + UPDATE_BATCH])
    return result


def _healthy_providers(repo: Repository) -> list[str]:
    """Configured providers that answer now, in config order: candidates to take over."""
    healthy = []
    for label, provider in repo.providers.items():
        try:
            provider.check()
        except StorageError:
            continue
        healthy.append(label)
    return healthy


def plan_chunk(store: ChunkStore, record: ChunkRecord, healthy: list[str]) -> ChunkPlan:
    """Read every object of the chunk and decide what to rewrite where (no writes)."""
    plan = ChunkPlan(record)
    fetched = {f.label: f for f in store.fetch_many(record, list(record.providers),
                                                    skip_failing=True)}
    assembler: ChunkAssembler[bytes] = ChunkAssembler(
        record.id, lambda sealed: store.authentic(record.id, sealed))
    for label in store.read_order(record):
        if assembler.add(fetched[label]):
            break
    if assembler.sealed is None:
        plan.error = f"cannot be rebuilt: {assembler.failure()}"
        return plan
    if assembler.encoding is None:
        homeless = _plan_copies(store, plan, fetched, assembler.sealed)
        if record.pack is not None and (plan.writes or homeless):
            plan.unpack = True
            plan.writes = [(label, assembler.sealed) for label in record.providers
                           if label in store.providers]
    else:
        homeless = _plan_shards(plan, fetched, assembler.sealed, assembler.encoding)
    _place_elsewhere(store, plan, homeless, healthy)
    unreachable = [label for label, _blob in plan.writes if store.failing(label)]
    if unreachable:
        if plan.unpack:  # a packed chunk moves out of its pack everywhere or nowhere
            plan.writes, plan.added, plan.dropped, plan.unpack = [], [], [], False
        plan.writes = [(label, blob) for label, blob in plan.writes if label not in unreachable]
        plan.error = plan.error or (f"provider(s) {', '.join(unreachable)} unreachable "
                                    "(take a dead one out of the config to move its share)")
    return plan


def _plan_copies(store: ChunkStore, plan: ChunkPlan, fetched: dict[str, Fetched],
                 sealed: bytes) -> list[bytes]:
    """Whole copies: each configured provider must hold one that authenticates. Returns
    the copies that providers gone from the config held."""
    homeless: list[bytes] = []
    for label in plan.record.providers:
        found = fetched[label]
        if not found.configured:
            plan.problems.append(found.error)
            homeless.append(sealed)
            continue
        if found.blob is None:
            plan.problems.append(found.error)
        elif erasure.is_shard(found.blob):
            plan.problems.append(f"provider '{label}': holds a shard, not a copy")
        else:
            try:
                store.authentic(plan.record.id, found.blob)
                continue
            except IntegrityError as exc:
                plan.problems.append(f"provider '{label}': {exc}")
        plan.writes.append((label, sealed))
    return homeless


def _plan_shards(plan: ChunkPlan, fetched: dict[str, Fetched], sealed: bytes,
                 encoding: tuple[bytes, int, int, int]) -> list[bytes]:
    """Shards: each of the k+m indices must be held, soundly, by one provider. Returns the
    shards no configured provider of the chunk is left to hold."""
    _set_id, k, m, _length = encoding
    objects = erasure.encode(sealed, k, m)  # deterministic: identical to the lost ones
    held: dict[int, str] = {}
    redo: list[tuple[str, str]] = []
    for label in plan.record.providers:
        found = fetched[label]
        problem = found.error
        if not found.configured:
            plan.problems.append(problem)
            continue
        if found.blob is not None:
            try:
                shard = erasure.parse(found.blob)
            except IntegrityError as exc:
                problem = f"provider '{label}': {exc}"
            else:
                if shard.encoding == encoding and shard.index not in held:
                    held[shard.index] = label
                    continue
                problem = f"provider '{label}': shard {shard.index} of another write"
        redo.append((label, problem))
    missing = [i for i in range(k + m) if i not in held]
    # A label beyond the k+m needed (two writers raced) keeps what it holds: harmless.
    for (label, problem), index in zip(redo, missing, strict=False):
        plan.problems.append(problem)
        plan.writes.append((label, objects[index]))
    return [objects[i] for i in missing[len(redo):]]


def _place_elsewhere(store: ChunkStore, plan: ChunkPlan, homeless: list[bytes],
                     healthy: list[str]) -> None:
    """Put what providers gone from the config held on healthy providers that do not hold
    the chunk yet, rotated by chunk id to spread the load."""
    if not homeless:
        return
    candidates = [label for label in healthy if label not in plan.record.providers]
    if candidates:
        start = plan.record.id[1] % len(candidates)
        candidates = candidates[start:] + candidates[:start]
    for label, blob in zip(candidates, homeless, strict=False):
        plan.writes.append((label, blob))
        plan.added.append(label)
    gone = [label for label in plan.record.providers if label not in store.providers]
    plan.dropped = gone[:len(plan.added)]
    if len(homeless) > len(plan.added):
        what = "shard(s)" if erasure.is_shard(homeless[0]) else "copy(ies)"
        plan.error = (f"{len(homeless) - len(plan.added)} {what} cannot be placed: no other "
                      "healthy provider is configured")


def apply_plan(store: ChunkStore, plan: ChunkPlan) -> None:
    """Write a plan's objects; a failed write drops it (and any move) and names the error."""
    done: list[tuple[str, bytes]] = []
    errors: list[str] = []
    for label, blob in plan.writes:
        try:
            store.store_objects(plan.record.id, [(label, blob)])
        except StorageError as exc:
            errors.append(str(exc))
            continue
        done.append((label, blob))
    if not errors:
        return
    if plan.unpack:
        # All or nothing: the record keeps pointing into the pack on every provider (the
        # objects written are orphans for gc), so no provider is left with neither.
        plan.unpack, plan.added, plan.dropped = False, [], []
    else:
        failed = {label for label, _blob in plan.writes} - {label for label, _blob in done}
        plan.added = [label for label in plan.added if label not in failed]
        plan.dropped = plan.dropped[:len(plan.added)]
    plan.writes = done
    plan.error = plan.error or "; ".join(errors)


# -- what status shows ---------------------------------------------------------------------


@dataclass
class RedundancySummary:
    """Storage overhead and loss tolerance, from the manifest alone (nothing downloaded)."""

    policy: str
    layout: str = ""
    #: Stored bytes per sealed byte under the policy: N (Replicate), (k+m)/k (Erasure).
    factor: float = 1.0
    policy_survives: int = 0
    bytes_plain: int = 0
    #: Every copy and shard (with shard headers) the manifest records.
    bytes_stored: int = 0
    #: Providers the repository can lose with every chunk still readable (min over chunks
    #: of its configured providers beyond those it needs); None without chunks.
    survives: int | None = None
    #: Chunks that survive fewer losses than the policy promises.
    degraded: int = 0
    #: Stored bytes per provider label (copies whole, shards at their own size).
    per_provider: dict[str, int] = field(default_factory=dict)
    error: str = ""

    @property
    def overhead(self) -> float:
        return self.bytes_stored / self.bytes_plain if self.bytes_plain else 0.0

    def as_dict(self) -> dict[str, object]:
        return {"policy": self.policy, "layout": self.layout, "factor": round(self.factor, 4),
                "bytes_plain": self.bytes_plain, "bytes_stored": self.bytes_stored,
                "overhead": round(self.overhead, 4), "survives": self.survives,
                "policy_survives": self.policy_survives, "degraded_chunks": self.degraded,
                "error": self.error}

    def text(self) -> str:
        """One line for ``enigma status``."""
        if self.error:
            return f"{self.policy}: unknown ({self.error})"
        line = f"{self.policy} ({self.layout}, factor {self.factor:.2f})"
        if self.bytes_plain:
            line += f"; stored {self.overhead:.2f}x the unique data"
        survives = self.policy_survives if self.survives is None else self.survives
        line += f"; survives the loss of {survives} provider{'' if survives == 1 else 's'}"
        if self.degraded:
            line += (f"; {self.degraded} chunk{'' if self.degraded == 1 else 's'} below the "
                     "policy")
        return line


def redundancy_summary(repo: Repository) -> RedundancySummary:
    """Walk the chunk records. The manifest keeps each chunk's providers, not its layout:
    a chunk on several providers is taken to be laid out as the configured policy lays
    chunks out (shards under Erasure, copies otherwise); repair reads the objects and
    never relies on that."""
    summary = RedundancySummary(repo.config.distribution)
    try:
        redundancy = redundancy_of(repo.distribution)
    except ConfigError as exc:
        summary.error = str(exc)
        redundancy = None
    else:
        summary.layout = redundancy.describe()
        summary.factor = redundancy.factor
        summary.policy_survives = redundancy.tolerates
    configured = set(repo.providers)
    survives: int | None = None
    for record in repo.manifest.iter_chunks():
        summary.bytes_plain += record.size
        n = len(record.providers)
        here = sum(1 for label in record.providers if label in configured)
        if redundancy is not None and redundancy.erasure and n > 1:
            k = redundancy.data_shards
            each = erasure.shard_object_size(record.stored_size, k)
            tolerates = here - k
        else:
            each = record.stored_size
            tolerates = here - 1
        summary.bytes_stored += n * each
        for label in record.providers:
            summary.per_provider[label] = summary.per_provider.get(label, 0) + each
        survives = tolerates if survives is None else min(survives, tolerates)
        if redundancy is not None and tolerates < redundancy.tolerates:
            summary.degraded += 1
    if redundancy is not None and survives is not None:
        summary.survives = max(0, survives)
    return summary
