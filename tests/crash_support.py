"""Kill-and-recover trials for ``enigma backup`` and ``enigma gc`` (tests and bench/crash_soak).

A trial changes part of a source tree, starts the real ``enigma backup`` and SIGKILLs it at
a seeded moment: either when a random number of new chunk objects has reached the disk (so
the kill lands mid-upload whatever the machine's speed) or after a random delay up to a
full backup's duration (so start-up, the manifest commit and the snapshot upload get hit
too). Then it checks what the issue promises: no manifest row points at a missing or short
chunk object, a re-run completes without rewriting any object already stored, and the
restore is bit-exact.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from helpers import ENIGMA, PASSPHRASE, Enigma, restored_root, snapshot

SMALL_CDC = "[enigma.chunk_strategy.Cdc]\nmin_size = 16384\navg_size = 65536\nmax_size = 262144\n"
SMALL_FILES = 80
MEDIUM_FILES = 10
LARGE_FILES = 2


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENIGMA_")}
    env.update(ENIGMA_PASSPHRASE=PASSPHRASE, ENIGMA_RETRY_SECONDS="3", **extra)
    return env


def scan_manifest(config_dir: Path) -> list[str]:
    """Every chunk row must name an object on disk of exactly its stored size; every file's
    chunk must have a row. Read straight from SQLite, independently of ``enigma check``."""
    problems = []
    store = config_dir / "storage"
    db = sqlite3.connect(config_dir / "manifest.db", timeout=30)
    try:
        rows = db.execute("SELECT c.id, c.stored_size FROM chunks c "
                          "JOIN chunk_locations l ON l.chunk_id = c.id").fetchall()
        for chunk_id, stored_size in rows:
            hexid = bytes(chunk_id).hex()
            path = store / "chunks" / hexid[:2] / hexid
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                problems.append(f"chunk {hexid[:12]} recorded but missing")
                continue
            if size != stored_size:
                problems.append(f"chunk {hexid[:12]} is {size} bytes, recorded {stored_size}")
        dangling = db.execute("SELECT count(*) FROM file_chunks f LEFT JOIN chunks c "
                              "ON c.id = f.chunk_id WHERE c.id IS NULL").fetchone()[0]
        if dangling:
            problems.append(f"{dangling} file chunk references have no chunk row")
    finally:
        db.close()
    return problems


def chunk_objects(config_dir: Path) -> dict[str, tuple[int, int]]:
    """Chunk objects on disk -> (inode, size): a rewritten object gets a new inode."""
    root = config_dir / "storage" / "chunks"
    found = {}
    for path in root.rglob("*"):
        if path.name.startswith(".tmp-"):
            continue
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if not path.is_dir():
            found[str(path.relative_to(root))] = (st.st_ino, st.st_size)
    return found


def count_chunks(config_dir: Path) -> int:
    root = config_dir / "storage" / "chunks"
    try:
        return sum(len(os.listdir(root / d)) for d in os.listdir(root))
    except FileNotFoundError:
        return 0


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
    stored_at_kill: int  # new chunk objects on disk when the kill came
    uploaded_again: int  # objects the re-run wrote that existed before it (must be 0)
    resumed: int  # stored-but-unrecorded objects the re-run reused
    problems: list[str] = field(default_factory=list)


class CrashRig:
    """One repository and source tree that trials keep changing, killing and checking."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.enigma = Enigma(root / "config")
        self.enigma.config_dir.mkdir(parents=True)
        (self.enigma.config_dir / "enigma.toml").write_text(
            f"[enigma]\n{SMALL_CDC}\n[enigma.compression]\nenabled = false\n")
        self.enigma.ok("init")
        self.source = root / "src"
        for i in range(SMALL_FILES):
            self.write(f"small/{i // 20}/f{i}.txt", self.rng.randint(1_000, 12_000))
        for i in range(MEDIUM_FILES):
            self.write(f"medium/m{i}.bin", self.rng.randint(20_000, 120_000))
        for i in range(LARGE_FILES):
            self.write(f"large/l{i}.bin", self.rng.randint(500_000, 900_000))
        self.full_seconds = 0.0

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
        return json.loads(result.out)

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([ENIGMA, "--config-dir", str(self.enigma.config_dir), *args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL, env=cli_env())

    def calibrate(self) -> None:
        """Time a backup of changed data from its first stored object to its exit: the
        range random kill delays come from (start-up time varies too much with load)."""
        self.mutate()
        before = count_chunks(self.enigma.config_dir)
        proc = self.start("backup", str(self.source))
        while proc.poll() is None and count_chunks(self.enigma.config_dir) == before:
            time.sleep(0.001)
        started = time.monotonic()
        proc.wait()
        self.full_seconds = max(time.monotonic() - started, 0.05)

    def trial(self, *, by_time: bool, check: bool, restore_dir: Path) -> TrialResult:
        self.mutate()
        before_kill = count_chunks(self.enigma.config_dir)
        proc = self.start("backup", str(self.source))
        if by_time:  # from the first new object: the upload, the commit, the snapshot
            delay = self.rng.uniform(0, 0.9) * self.full_seconds
            first: list[float] = []

            def due() -> bool:
                if not first and count_chunks(self.enigma.config_dir) > before_kill:
                    first.append(time.monotonic())
                return bool(first) and time.monotonic() - first[0] >= delay

            killed = kill_when(proc, due, 60)
            how = f"{delay:.2f} s after the first new object"
        else:
            target = before_kill + self.rng.randint(1, 30)
            killed = kill_when(
                proc, lambda: count_chunks(self.enigma.config_dir) >= target, 60)
            how = f"at {target - before_kill} new objects"
        stored = count_chunks(self.enigma.config_dir) - before_kill
        problems = scan_manifest(self.enigma.config_dir)
        if check:
            result = self.enigma("check", "--json")
            if result.code != 0:
                problems.append(f"enigma check failed: {result.err.strip()}")
        objects = chunk_objects(self.enigma.config_dir)
        summary = self.backup()
        after = chunk_objects(self.enigma.config_dir)
        rewritten = [k for k, v in objects.items() if after.get(k) != v]
        stats = summary["stats"]
        fresh = len(set(after) - set(objects))
        if summary["status"] != "complete":
            problems.append(f"re-run ended {summary['status']}")
        if fresh != stats["chunks_new"] - stats["chunks_resumed"]:
            problems.append(f"re-run wrote {fresh} objects but reports "
                            f"{stats['chunks_new']} new, {stats['chunks_resumed']} resumed")
        problems += self.restore_problems(summary["backup_id"], restore_dir)
        return TrialResult(killed, how, stored, len(rewritten), stats["chunks_resumed"],
                           problems)

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
