"""Kill-and-recover trials for ``enigma backup`` and ``enigma gc`` (tests and bench/crash_soak).

A trial changes part of a source tree, starts the real ``enigma backup`` and SIGKILLs it at
a seeded moment: either when a random number of new chunk objects has reached the disk (so
the kill lands mid-upload whatever the machine's speed) or after a random delay up to a
full backup's duration (so start-up, the manifest commit and the snapshot upload get hit
too). Then it checks what the issue promises: no manifest row points at a missing or short
chunk object or pack, a re-run completes without rewriting any object already stored, and
the restore is bit-exact.

Packs are on (the default ``pack_size``) unless a rig asks otherwise, and with the rig's
small chunks every chunk is packed: "objects" below are single chunk objects
(``chunks/``) and packs (``packs/``) alike. A killed run's stored but unrecorded single
objects are reused by the re-run; its unrecorded packs never are (they stay orphans for
gc), which ``trial`` checks object by object.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import struct
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from helpers import ENIGMA, PASSPHRASE, Enigma, restored_root, snapshot

from enigma.chunkstore import chunk_key
from enigma.packs import pack_key

SMALL_CDC = "[enigma.chunk_strategy.Cdc]\nmin_size = 16384\navg_size = 65536\nmax_size = 262144\n"
SMALL_FILES = 80
MEDIUM_FILES = 10
LARGE_FILES = 2


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENIGMA_")}
    env.update(ENIGMA_PASSPHRASE=PASSPHRASE, ENIGMA_RETRY_SECONDS="3", **extra)
    return env


def _pack_body_end(path: Path) -> int | None:
    """Where a pack's chunks end (before its sealed index and footer), read from its
    footer; None if the object is no whole pack (format in ``enigma.packs``)."""
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size < 9:
            return None
        f.seek(size - 9)
        magic, _version, index_length = struct.unpack(">4sBI", f.read(9))
    body_end = size - 9 - index_length
    return body_end if magic == b"ENGP" and body_end >= 0 else None


def scan_manifest(config_dir: Path) -> list[str]:
    """Every chunk row must name an object on disk of exactly its stored size, or a whole
    pack whose chunks span its (offset, stored size); every file's chunk must have a row.
    Read straight from SQLite and the files, independently of ``enigma check``."""
    problems = []
    store = config_dir / "storage"
    db = sqlite3.connect(config_dir / "manifest.db", timeout=30)
    try:
        rows = db.execute("SELECT c.id, c.stored_size, p.name, c.pack_offset FROM chunks c "
                          "JOIN chunk_locations l ON l.chunk_id = c.id "
                          "LEFT JOIN packs p ON p.id = c.pack").fetchall()
        for chunk_id, stored_size, pack, offset in rows:
            hexid = bytes(chunk_id).hex()
            if pack is None:
                path = store / chunk_key(bytes(chunk_id))
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    problems.append(f"chunk {hexid[:12]} recorded but missing")
                    continue
                if size != stored_size:
                    problems.append(f"chunk {hexid[:12]} is {size} bytes, recorded "
                                    f"{stored_size}")
                continue
            where = f"chunk {hexid[:12]} in pack {bytes(pack).hex()[:12]}"
            try:
                body_end = _pack_body_end(store / pack_key(bytes(pack)))
            except FileNotFoundError:
                problems.append(f"{where} recorded but the pack is missing")
                continue
            if body_end is None:
                problems.append(f"{where}: the pack is not whole")
            elif offset + stored_size > body_end:
                problems.append(f"{where} at {offset}+{stored_size} runs past the pack's "
                                f"chunks ({body_end} bytes)")
        dangling = db.execute("SELECT count(*) FROM file_chunks f LEFT JOIN chunks c "
                              "ON c.id = f.chunk_id WHERE c.id IS NULL").fetchone()[0]
        if dangling:
            problems.append(f"{dangling} file chunk references have no chunk row")
    finally:
        db.close()
    return problems


def recorded(config_dir: Path) -> dict[bytes, bytes | None]:
    """Chunk id -> pack id (None: an object of its own) of every chunk row."""
    db = sqlite3.connect(config_dir / "manifest.db", timeout=30)
    try:
        return {bytes(i): None if p is None else bytes(p)
                for i, p in db.execute("SELECT c.id, p.name FROM chunks c"
                                       " LEFT JOIN packs p ON p.id = c.pack")}
    finally:
        db.close()


def stored_objects(config_dir: Path) -> dict[str, tuple[int, int]]:
    """Chunk objects and packs on disk (``chunks/..``, ``packs/..``) -> (inode, size): a
    rewritten object gets a new inode."""
    store = config_dir / "storage"
    found = {}
    for prefix in ("chunks", "packs"):
        for path in (store / prefix).rglob("*"):
            if path.name.startswith(".tmp-"):
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if not path.is_dir():
                found[path.relative_to(store).as_posix()] = (st.st_ino, st.st_size)
    return found


def count_objects(config_dir: Path) -> int:
    """Entries under ``chunks/`` and ``packs/`` (a write in progress included): cheap
    enough to poll every millisecond."""
    total = 0
    for prefix in ("chunks", "packs"):
        root = config_dir / "storage" / prefix
        with contextlib.suppress(FileNotFoundError):  # not made yet, or gc emptied it
            total += sum(len(os.listdir(root / d)) for d in os.listdir(root))
    return total


#: The name bench/crash_soak.py knows: with packs a backup's objects are packs too.
count_chunks = count_objects


def summary_of(out: str) -> dict:
    """The summary of ``--json`` output: its last line (a run over a second prints status
    lines before it, docs/json.md)."""
    return json.loads(out.strip().splitlines()[-1])


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], deadline: float) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()``; False if it exited first."""
    end = time.monotonic() + deadline
    while proc.poll() is None:
        if ready() or time.monotonic() > end:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.001)
    return False


@dataclass
class TrialResult:
    killed: bool
    how: str
    stored_at_kill: int  # new objects (chunk objects, packs) on disk when the kill came
    uploaded_again: int  # objects the re-run wrote that existed before it (must be 0)
    resumed: int  # stored-but-unrecorded single chunk objects the re-run reused
    left_packs: int = 0  # packs the killed run stored but recorded no chunk of
    problems: list[str] = field(default_factory=list)


class CrashRig:
    """One repository and source tree that trials keep changing, killing and checking.

    ``pack_size`` goes into ``[enigma]`` (0: every chunk its own object); None keeps the
    default, packs on.
    """

    def __init__(self, root: Path, seed: int, *, pack_size: int | None = None) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.enigma = Enigma(root / "config")
        self.enigma.config_dir.mkdir(parents=True)
        packs = "" if pack_size is None else f"pack_size = {pack_size}\n"
        (self.enigma.config_dir / "enigma.toml").write_text(
            f"[enigma]\n{packs}{SMALL_CDC}\n[enigma.compression]\nenabled = false\n")
        self.enigma.ok("init")
        self.source = root / "src"
        for i in range(SMALL_FILES):
            self.write(f"small/{i // 20}/f{i}.txt", self.rng.randint(1_000, 12_000))
        for i in range(MEDIUM_FILES):
            self.write(f"medium/m{i}.bin", self.rng.randint(20_000, 120_000))
        for i in range(LARGE_FILES):
            self.write(f"large/l{i}.bin", self.rng.randint(500_000, 900_000))
        self.full_seconds = 0.0
        #: New objects a backup of changed data stores (``calibrate``): with packs a
        #: handful, without about 30; kills "at n new objects" pick n up to this.
        self.objects_per_backup = 30

    def write(self, rel: str, size: int) -> None:
        path = self.source / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.rng.randbytes(size))

    def mutate(self) -> None:
        """New content for a quarter of the small files, a few medium ones and one large."""
        for i in self.rng.sample(range(SMALL_FILES), SMALL_FILES // 4):
            self.write(f"small/{i // 20}/f{i}.txt", self.rng.randint(1_000, 12_000))
        for i in self.rng.sample(range(MEDIUM_FILES), 4):
            self.write(f"medium/m{i}.bin", self.rng.randint(20_000, 120_000))
        self.write(f"large/l{self.rng.randrange(LARGE_FILES)}.bin",
                   self.rng.randint(500_000, 900_000))

    def backup(self) -> dict:
        result = self.enigma.ok("backup", "--json", str(self.source))
        return summary_of(result.out)

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([ENIGMA, "--config-dir", str(self.enigma.config_dir), *args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL, env=cli_env())

    def calibrate(self) -> None:
        """Time a backup of changed data from its first stored object to its exit: the
        range random kill delays come from (start-up time varies too much with load);
        and count the objects it stores."""
        self.mutate()
        before = count_objects(self.enigma.config_dir)
        proc = self.start("backup", str(self.source))
        while proc.poll() is None and count_objects(self.enigma.config_dir) == before:
            time.sleep(0.001)
        started = time.monotonic()
        proc.wait()
        self.full_seconds = max(time.monotonic() - started, 0.05)
        self.objects_per_backup = max(1, count_objects(self.enigma.config_dir) - before)

    def trial(self, *, by_time: bool, check: bool, restore_dir: Path) -> TrialResult:
        self.mutate()
        before_kill = count_objects(self.enigma.config_dir)
        earlier = set(stored_objects(self.enigma.config_dir))
        proc = self.start("backup", str(self.source))
        if by_time:  # from the first new object: the upload, the commit, the snapshot
            delay = self.rng.uniform(0, 0.9) * self.full_seconds
            first: list[float] = []

            def due() -> bool:
                if not first and count_objects(self.enigma.config_dir) > before_kill:
                    first.append(time.monotonic())
                return bool(first) and time.monotonic() - first[0] >= delay

            killed = kill_when(proc, due, 60)
            how = f"{delay:.2f} s after the first new object"
        else:
            target = before_kill + self.rng.randint(1, self.objects_per_backup)
            killed = kill_when(
                proc, lambda: count_objects(self.enigma.config_dir) >= target, 60)
            how = f"at {target - before_kill} new objects"
        stored = count_objects(self.enigma.config_dir) - before_kill
        problems = scan_manifest(self.enigma.config_dir)
        if check:
            result = self.enigma("check", "--json")
            if result.code != 0:
                problems.append(f"enigma check failed: {result.err.strip()}")
        objects = stored_objects(self.enigma.config_dir)
        rows = recorded(self.enigma.config_dir)
        used_packs = {pack_key(p) for p in rows.values() if p is not None}
        left_packs = {k for k in set(objects) - earlier
                      if k.startswith("packs/") and k not in used_packs}
        summary = self.backup()
        after = stored_objects(self.enigma.config_dir)
        rewritten = [k for k, v in objects.items() if after.get(k) != v]
        stats = summary["stats"]
        if summary["status"] != "complete":
            problems.append(f"re-run ended {summary['status']}")
        # Object by object: what the re-run wrote is exactly the objects of the chunks it
        # recorded, less the single objects it reused; it never records into a leftover
        # pack (nor rewrites one: ``rewritten``).
        new_rows = {i: p for i, p in recorded(self.enigma.config_dir).items() if i not in rows}
        singles = {chunk_key(i) for i, p in new_rows.items() if p is None}
        reused = singles & set(objects)
        expected = (singles - reused) | {pack_key(p) for p in new_rows.values() if p is not None}
        fresh = set(after) - set(objects)
        if fresh != expected:
            problems.append(f"re-run wrote {len(fresh)} objects, {len(fresh - expected)} of "
                            f"them unrecorded; {len(expected - fresh)} recorded ones are "
                            f"not new")
        if (stats["chunks_new"], stats["chunks_resumed"]) != (len(new_rows), len(reused)):
            problems.append(f"re-run recorded {len(new_rows)} chunks, reusing {len(reused)} "
                            f"objects, but reports {stats['chunks_new']} new, "
                            f"{stats['chunks_resumed']} resumed")
        problems += self.restore_problems(summary["backup_id"], restore_dir)
        return TrialResult(killed, how, stored, len(rewritten), stats["chunks_resumed"],
                           len(left_packs), problems)

    def restore_problems(self, backup_id: str, dest: Path,
                         expected: dict[str, tuple] | None = None) -> list[str]:
        shutil.rmtree(dest, ignore_errors=True)
        result = self.enigma("restore", backup_id, str(dest))
        if result.code != 0:
            return [f"restore failed: {result.err.strip()}"]
        want = snapshot(self.source) if expected is None else expected
        got = snapshot(restored_root(dest, self.source))
        shutil.rmtree(dest, ignore_errors=True)
        if got != want:
            differ = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
            return [f"restore differs in {len(differ)} entries, e.g. {differ[:3]}"]
        return []
