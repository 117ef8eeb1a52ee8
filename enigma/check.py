"""``enigma check``: the manifest against what the backends hold, and optionally the data.

Every provider's ``chunks/`` and ``packs/`` are listed once; then each chunk record is
walked (streamed, in parallel): each provider it names must hold ``chunk_key(id)`` (or,
for a packed chunk, its pack, long enough to hold the chunk), with the recorded size
where that is known (a two-byte ranged read: no interface needs sizes), and the chunks
selected by ``--read-data``/``--read-data-subset`` are downloaded and authenticated
through ``ChunkStore.get`` like ``verify``. Objects no record names are orphans.

A backup running meanwhile must not look like damage. Listing comes first and each
apparent miss is confirmed with ``exists`` (a chunk recorded after the listing was stored
before its record); an apparent orphan is checked against the manifest again at the end
(stored before the listing, recorded after the walk). The repository lock, held shared,
keeps gc from deleting anything while the check runs. Orphans are therefore reported but
are not errors: a running backup makes them, and ``enigma gc`` removes them (restic's check
treats unreferenced packs the same way).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from enigma.chunkstore import ChunkStore, chunk_key, stored_chunks, stored_packs, with_retries
from enigma.errors import EnigmaError, ObjectNotFound, StorageError
from enigma.interfaces import StorageProvider
from enigma.lock import repository_lock
from enigma.manifest import ChunkRecord
from enigma.packs import pack_key
from enigma.pipeline import ordered_map
from enigma.progress import NO_PROGRESS, Progress
from enigma.repository import Repository

#: Checks in flight at once: probes wait on the network far more than on the CPU.
WORKERS = 16
#: Nominal bytes of a metadata-only item against the read-ahead budget: bounds the items
#: in flight (and their futures) to a few hundred however large the repository.
PROBE_WEIGHT = 64 * 1024

_PERCENT = re.compile(r"(\d+(?:\.\d+)?)%")
_PART = re.compile(r"(\d+)/(\d+)")


class InvalidSubset(EnigmaError):
    """A ``--read-data-subset`` value is malformed."""


@dataclass(frozen=True)
class Subset:
    """Which chunks to download: all, a random share, or the n-th of t partitions."""

    percent: float | None = None
    part: tuple[int, int] | None = None

    @classmethod
    def parse(cls, text: str) -> Subset:
        """restic's forms: ``N%`` (0 < N <= 100, random) or ``n/t`` (1 <= n <= t)."""
        if match := _PERCENT.fullmatch(text.strip()):
            percent = float(match.group(1))
            if 0 < percent <= 100:
                return cls(percent=percent)
        elif match := _PART.fullmatch(text.strip()):
            n, t = int(match.group(1)), int(match.group(2))
            if 1 <= n <= t:
                return cls(part=(n, t))
        raise InvalidSubset(f"--read-data-subset {text!r}: use N% (0 < N <= 100, a random "
                            "share) or n/t (1 <= n <= t, the n-th of t parts)")

    def __str__(self) -> str:
        if self.part is not None:
            return f"{self.part[0]}/{self.part[1]}"
        return f"{self.percent:g}%"


EVERYTHING = Subset(percent=100.0)


def in_part(chunk_id: bytes, n: int, t: int) -> bool:
    """Whether a chunk falls in part n of t. Chunk ids are keyed hashes, so their first
    eight bytes spread evenly; t runs with n = 1..t read every chunk exactly once."""
    return int.from_bytes(chunk_id[:8], "big") % t == n - 1


def selector(subset: Subset | None, total: int) -> Callable[[int, bytes], bool]:
    """A predicate on (position in the walk, chunk id) choosing the chunks to read.

    ``N%`` picks round(N% of ``total``) positions at random, at least one (restic's rule);
    positions past ``total`` (chunks added during the walk) are not read.
    """
    if subset is None:
        return lambda _i, _id: False
    if subset.part is not None:
        n, t = subset.part
        return lambda _i, chunk_id: in_part(chunk_id, n, t)
    assert subset.percent is not None
    if subset.percent >= 100:
        return lambda _i, _id: True
    count = min(total, max(1, round(total * subset.percent / 100))) if total else 0
    chosen = set(random.sample(range(total), count))
    return lambda index, _id: index in chosen


def expected_size(record: ChunkRecord, provider: str) -> int | None:
    """The size ``provider``'s object of ``record`` must have, or None when not known.

    A chunk on one provider is its sealed bytes. Replicas and erasure-coded shards are
    being added alongside: until their layout is settled they are not compared.
    """
    return record.stored_size if len(record.providers) == 1 else None


@dataclass
class Problem:
    """One thing wrong with one chunk: ``kind`` is missing, size, unreadable (the
    provider failed to answer for it) or damaged (its data failed to download or
    authenticate)."""

    chunk_id: bytes
    kind: str
    provider: str  # "" when not about one provider (a failed read)
    detail: str


@dataclass
class CheckResult:
    subset: str = ""  # what was read: "", "100%", "10%", "2/5"
    chunks: int = 0
    listed: dict[str, int] = field(default_factory=dict)  # objects (chunks, packs) by provider
    sizes_checked: int = 0
    read: int = 0  # chunks chosen for reading (not fetched where every copy is known bad)
    bytes_read: int = 0
    problems: list[Problem] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)  # provider -> error
    orphans: dict[str, list[str]] = field(default_factory=dict)  # provider -> keys
    files: dict[bytes, list[tuple[str, str]]] = field(default_factory=dict)  # (backup, path)
    gateway_objects: dict[bytes, list[tuple[str, str]]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.unreachable

    @property
    def bad_chunks(self) -> list[bytes]:
        """Each damaged chunk once, in the order found."""
        return list(dict.fromkeys(p.chunk_id for p in self.problems))


@dataclass
class _Item:
    record: ChunkRecord
    listed: frozenset[str]  # providers whose listing showed the object
    read: bool


@dataclass
class _Listing:
    """What one provider holds: single chunk objects and packs, by id."""

    chunks: set[bytes]
    packs: set[bytes]


def _list_objects(label: str, provider: StorageProvider) -> _Listing:
    return _Listing(set(stored_chunks(label, provider)), set(stored_packs(label, provider)))


def _list_all(repo: Repository, result: CheckResult) -> dict[str, _Listing]:
    """Each reachable provider's objects; an unreachable one is recorded, not fatal."""
    listed: dict[str, _Listing] = {}
    providers = repo.providers
    with ThreadPoolExecutor(max(1, len(providers)), thread_name_prefix="enigma-list") as pool:
        futures = {label: pool.submit(_list_objects, label, p)
                   for label, p in providers.items()}
        for label, future in futures.items():
            try:
                listed[label] = future.result()
            except StorageError as exc:
                result.unreachable[label] = str(exc)
            else:
                result.listed[label] = len(listed[label].chunks) + len(listed[label].packs)
    return listed


class _Inspector:
    """Checks one chunk record on a worker thread: copies present, sizes right, data good."""

    def __init__(self, repo: Repository, reachable: set[str], reading: bool) -> None:
        self.providers = repo.providers
        self.reachable = reachable
        # Only reading needs the keys: a metadata check runs without unlocking them.
        self.store = ChunkStore(repo) if reading else None

    def __call__(self, item: _Item) -> tuple[list[Problem], int, int]:
        """(problems, sizes checked, bytes read)."""
        record = item.record
        problems: list[Problem] = []
        sizes = 0
        for label in record.providers:
            provider = self.providers.get(label)
            if provider is None:
                problems.append(Problem(record.id, "missing", label,
                                        f"provider '{label}' is not configured"))
            elif label in self.reachable:
                problem, sized = self.object_problem(record, label, provider, item)
                sizes += sized
                if problem is not None:
                    problems.append(problem)
        read = 0
        # A read cannot succeed where every copy is already known missing or cut short.
        if item.read and self.store is not None and len(problems) < len(record.providers):
            try:
                read = len(self.store.get(record))
            except EnigmaError as exc:
                problems.append(Problem(record.id, "damaged", "", str(exc)))
        return problems, sizes, read

    def object_problem(self, record: ChunkRecord, label: str, provider: StorageProvider,
                       item: _Item) -> tuple[Problem | None, int]:
        packed = record.pack is not None
        key = pack_key(record.pack) if record.pack is not None else chunk_key(record.id)
        where = f"provider '{label}'"
        try:
            if label not in item.listed and not with_retries(
                    f"checking {where}", provider.exists, key):
                return Problem(record.id, "missing", label, f"missing on {where}"), 0
            size = record.offset + record.stored_size if packed else \
                expected_size(record, label)
            if size is None:
                return None, 0
            # A range starting at the last byte holds exactly one byte iff the size is right
            # (a pack goes on past its last chunk: its index follows).
            tail = with_retries(f"reading from {where}", provider.get_range, key, size - 1, 2)
        except ObjectNotFound:
            return Problem(record.id, "missing", label, f"missing on {where}"), 0
        except StorageError as exc:
            return Problem(record.id, "unreadable", label, str(exc)), 0
        if packed and tail:
            return None, 1
        if packed:
            return Problem(record.id, "size", label, f"pack on {where} ends before the "
                           "chunk's recorded bytes"), 1
        if len(tail) != 1:
            relation = "shorter" if not tail else "longer"
            return Problem(record.id, "size", label, f"object on {where} is {relation} than "
                           f"the recorded {size} bytes"), 1
        return None, 1


def _weight(item: _Item) -> int:
    return max(item.record.stored_size, PROBE_WEIGHT) if item.read else PROBE_WEIGHT


def run_check(repo: Repository, subset: Subset | None = None, *,
              progress: Progress = NO_PROGRESS) -> CheckResult:
    """Check the whole repository; ``subset`` (None: metadata only) chooses what to read.

    ``progress`` counts chunks checked (files) and the bytes downloaded and authenticated.
    """
    manifest = repo.manifest
    result = CheckResult(subset=str(subset) if subset else "")
    with repository_lock(repo.config.config_dir, exclusive=False), progress.running("check"):
        _walk(repo, subset, result, progress)
    bad = result.bad_chunks
    if bad:
        result.files = manifest.chunk_files(bad)
        result.gateway_objects = manifest.chunk_objects(bad)
    return result


def _walk(repo: Repository, subset: Subset | None, result: CheckResult,
          progress: Progress) -> None:
    """List every provider, check every chunk record, then sort out the orphans."""
    manifest = repo.manifest
    progress.current_file("listing the providers' chunk objects")
    listed = _list_all(repo, result)
    progress.current_file(None)
    count, plain, _stored = manifest.chunk_totals()
    choose = selector(subset, count)
    reads_all = subset is not None and subset.percent is not None and subset.percent >= 100
    progress.set_totals(files=count, bytes=plain if reads_all else None)
    inspect = _Inspector(repo, set(listed), reading=subset is not None)

    def items() -> Iterator[_Item]:
        for index, record in enumerate(manifest.iter_chunks()):
            present = set()
            for label in record.providers:
                listing = listed.get(label)
                if listing is None:
                    continue
                if record.pack is not None:
                    if record.pack in listing.packs:
                        present.add(label)
                elif record.id in listing.chunks:
                    present.add(label)
                    listing.chunks.discard(record.id)  # what is left: orphan candidates
            yield _Item(record, frozenset(present), choose(index, record.id))

    for item, future in ordered_map(inspect, items(), size=_weight, workers=WORKERS):
        problems, sizes, read = future.result()
        result.chunks += 1
        result.sizes_checked += sizes
        result.read += item.read
        result.bytes_read += read
        result.problems.extend(problems)
        for problem in problems:
            progress.error(problem.chunk_id.hex(), f"{problem.kind}: {problem.detail}")
        progress.advance(files=1, bytes=read)
    for label, listing in listed.items():
        leftover = listing.chunks
        known = manifest.known_chunks(leftover)  # recorded during the walk, or a stray copy
        orphans = sorted(chunk_key(i) for i in leftover if i not in known)
        used = manifest.pack_chunk_counts(listing.packs)
        orphans += sorted(pack_key(i) for i in listing.packs if i not in used)
        if orphans:
            result.orphans[label] = orphans


#: Users of one bad chunk shown in the text report (``--json`` lists them all).
SHOWN = 10


def report_lines(result: CheckResult) -> Iterator[str]:
    """The text report: each problem with the files and objects it hurts, then orphans."""
    for label, error in result.unreachable.items():
        yield f"unreachable: provider '{label}' could not be listed: {error}"
    by_chunk: dict[bytes, list[Problem]] = {}
    for problem in result.problems:
        by_chunk.setdefault(problem.chunk_id, []).append(problem)
    for chunk_id, problems in by_chunk.items():
        for problem in problems:
            yield f"{problem.kind}: chunk {chunk_id.hex()}: {problem.detail}"
        users = ([f"file {b} {p}" for b, p in result.files.get(chunk_id, [])]
                 + [f"object {b}/{k}" for b, k in result.gateway_objects.get(chunk_id, [])])
        if not users:
            yield "  used by nothing (enigma gc deletes it)"
        yield from (f"  used by {user}" for user in users[:SHOWN])
        if len(users) > SHOWN:
            yield f"  ... and {len(users) - SHOWN} more (see --json)"
    for label, keys in result.orphans.items():
        yield from (f"orphan: {key} on provider '{label}'" for key in keys[:SHOWN])
        if len(keys) > SHOWN:
            yield f"orphan: ... and {len(keys) - SHOWN} more on provider '{label}'"


def to_json(result: CheckResult) -> dict[str, Any]:
    """The result for ``--json``: every problem with all the files and objects it hurts."""
    return {
        "ok": result.ok, "read_subset": result.subset, "chunks": result.chunks,
        "listed": result.listed, "sizes_checked": result.sizes_checked,
        "read": result.read, "bytes_read": result.bytes_read,
        "unreachable": result.unreachable, "orphans": result.orphans,
        "problems": [
            {"chunk": p.chunk_id.hex(), "kind": p.kind, "provider": p.provider,
             "detail": p.detail,
             "files": [{"backup": b, "path": path}
                       for b, path in result.files.get(p.chunk_id, [])],
             "objects": [{"bucket": b, "key": k}
                         for b, k in result.gateway_objects.get(p.chunk_id, [])]}
            for p in result.problems
        ],
    }


def failure_summary(result: CheckResult) -> str:
    """The one-line error ``enigma check`` exits with when anything is wrong."""
    kinds: dict[str, int] = {}
    for problem in result.problems:
        kinds[problem.kind] = kinds.get(problem.kind, 0) + 1
    parts = [f"{n} {kind}" for kind, n in sorted(kinds.items())]
    if result.unreachable:
        parts.append(f"{len(result.unreachable)} provider(s) unreachable")
    files = len({user for users in result.files.values() for user in users})
    objects = len({user for users in result.gateway_objects.values() for user in users})
    users = f"{files} backed-up file(s)" + (f" and {objects} gateway object(s)" if objects else "")
    return (f"check: {len(result.bad_chunks)} of {result.chunks} chunks have problems "
            f"({', '.join(parts)}); {users} use them")
