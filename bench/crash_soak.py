"""Crash soak: hundreds of SIGKILLed ``enigma backup`` runs, and the resume measurement.

Not part of the test suite (tests/test_crash.py runs 30 trials). Each trial changes part of
a tree, kills a backup at a seeded random moment, then checks that no manifest row points
at a missing or short chunk, that the re-run rewrites no stored object, and that the
restore is bit-exact (see tests/crash_support.py).

    .venv/bin/python bench/crash_soak.py --trials 300 [--seed 1] [--check-every 10]
    .venv/bin/python bench/crash_soak.py --measure [--size-mb 200]

``--measure`` times a full backup of a fresh tree, then in a second repository kills the
same backup half-way through (half the full backup's time) and times the re-run: with resuming
working, the re-run takes about half as long as the full backup.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from crash_support import SMALL_CDC, CrashRig, cli_env, count_chunks, kill_when
from helpers import Enigma


def soak(trials: int, seed: int, check_every: int) -> int:
    failures = 0
    with tempfile.TemporaryDirectory(prefix="enigma-soak-") as tmp:
        rig = CrashRig(Path(tmp) / "rig", seed)
        rig.calibrate()
        kinds: dict[str, int] = {"killed mid-upload": 0, "killed before upload": 0,
                                 "finished first": 0}
        resumed = 0
        started = time.monotonic()
        for trial in range(trials):
            result = rig.trial(by_time=trial % 3 == 2, check=trial % check_every == 0,
                               restore_dir=Path(tmp) / "out")
            if not result.killed:
                kinds["finished first"] += 1
            elif result.stored_at_kill:
                kinds["killed mid-upload"] += 1
            else:
                kinds["killed before upload"] += 1
            resumed += result.resumed
            bad = result.problems + ([f"{result.uploaded_again} objects rewritten"]
                                     if result.uploaded_again else [])
            if bad:
                failures += 1
                print(f"trial {trial} ({result.how}): FAILED: {'; '.join(bad)}", flush=True)
            elif (trial + 1) % 25 == 0:
                print(f"{trial + 1} trials, {failures} failed", flush=True)
        elapsed = time.monotonic() - started
    print(f"\n{trials} trials in {elapsed:.0f} s (seed {seed}): {failures} failed")
    for kind, n in kinds.items():
        print(f"  {kind:22} {n}")
    print(f"  objects reused on resume: {resumed}")
    return 1 if failures else 0


def make_tree(root: Path, size_mb: int, seed: int) -> None:
    rng = random.Random(seed)
    written = 0
    i = 0
    while written < size_mb << 20:
        size = rng.choice([rng.randint(1_000, 15_000)] * 3 + [rng.randint(100_000, 4 << 20)])
        path = root / f"d{i % 50}" / f"f{i}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
        written += size
        i += 1


def timed_backup(enigma: Enigma, source: Path) -> float:
    started = time.monotonic()
    enigma.ok("backup", str(source))
    return time.monotonic() - started


def fresh_repo(root: Path) -> Enigma:
    enigma = Enigma(root)
    root.mkdir(parents=True)
    (root / "enigma.toml").write_text(f"[enigma]\n{SMALL_CDC}\n")
    enigma.ok("init")
    return enigma


def measure(size_mb: int, seed: int) -> int:
    import subprocess

    from helpers import ENIGMA

    with tempfile.TemporaryDirectory(prefix="enigma-resume-") as tmp:
        source = Path(tmp) / "src"
        make_tree(source, size_mb, seed)
        full_repo = fresh_repo(Path(tmp) / "full")
        full = timed_backup(full_repo, source)
        objects = count_chunks(full_repo.config_dir)
        repo = fresh_repo(Path(tmp) / "killed")
        proc = subprocess.Popen([ENIGMA, "--config-dir", str(repo.config_dir), "backup",
                                 str(source)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=cli_env())
        started = time.monotonic()
        kill_when(proc, lambda: time.monotonic() - started >= full / 2, 600)
        until_kill = time.monotonic() - started
        at_kill = count_chunks(repo.config_dir)
        rerun = timed_backup(repo, source)
        fresh = count_chunks(repo.config_dir) - at_kill
    print(f"tree {size_mb} MB, {objects} chunk objects")
    print(f"full backup:             {full:6.2f} s")
    print(f"killed after             {until_kill:6.2f} s with {at_kill} objects stored "
          f"({at_kill / objects:.0%})")
    print(f"re-run:                  {rerun:6.2f} s, {fresh} objects written "
          f"({rerun / full:.0%} of the full backup)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--check-every", type=int, default=10,
                        help="run `enigma check` after every n-th kill (a direct scan "
                             "runs after each)")
    parser.add_argument("--measure", action="store_true",
                        help="measure a resumed backup against a full one instead")
    parser.add_argument("--size-mb", type=int, default=200)
    args = parser.parse_args()
    if args.measure:
        return measure(args.size_mb, args.seed)
    return soak(args.trials, args.seed, max(1, args.check_every))


if __name__ == "__main__":
    sys.exit(main())
