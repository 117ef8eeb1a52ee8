"""Floors: the least time each benchmark step can take on this machine, whatever the tool.

Issue 3's targets are ratios to restic (3x its MB/s, half its time). This script measures,
on the same tree and machine, what bounds *every* tool from below, so that a target asking
for less time than its floor is known to be out of reach here, and by how much:

- **restore**: ``cp -a`` of the plain tree into an empty directory on the same disk. No
  decryption, decompression or verification: only the kernel's cost of creating the files
  and writing the bytes, which a restore cannot avoid.
- **backup, CPU**: one core's seconds to read every file, HMAC-SHA256 it (the chunk id),
  FastCDC-cut the ones larger than a chunk, zstd-3 it (kept where it shrinks, as every
  tool does; whole files, so no per-chunk overhead counts) and AES-256-GCM the result,
  divided by the usable cores (every stage releases the GIL, so it is the best case).
- **backup, writing**: the stored bytes (compressed where it paid) written and fsynced as
  one file, the cheapest layout there is (restic's pack files come closest).
- **per-command fixed cost**: Enigma's keystore unlock (Argon2id at the parameters a new
  keystore gets) and its interpreter start-up with imports; restic's ``cat config`` on a
  fresh repository (scrypt, calibrated by restic to ~0.5 s, plus start-up), if installed.

A benchmark, not a test. Usage::

    python bench/floors.py --workdir /var/tmp/eb          # reuses compare.py's dataset
    python bench/floors.py --scale 0.1 --json floors.json
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import PASSPHRASE, Enigma, machine_info
from dataset import MB, MiB, generate

from enigma.chunkstore import MIN_SAVING  # zstd output is kept only if it saves this much
from enigma.plugins.cdc import DEFAULT_AVG, DEFAULT_MAX, DEFAULT_MIN

WRITE_BLOCK = 16 * MiB


def regular_files(root: Path) -> list[str]:
    """Every regular file under ``root`` (symlinks not followed), in walk order."""
    found = []
    for directory, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            if not os.path.islink(path) and os.path.isfile(path):
                found.append(path)
    return found


def cpu_floor(files: list[str]) -> dict[str, Any]:
    """Single-core seconds of each unavoidable stage over the tree, and the stored bytes."""
    import zstandard
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from pyfastcdc import FastCDC

    key, nonce = os.urandom(32), os.urandom(12)
    aead = AESGCM(key)
    compressor = zstandard.ZstdCompressor(level=3)
    seconds = dict.fromkeys(("read", "hmac", "cdc", "zstd", "aes"), 0.0)
    total = stored = 0
    clock = time.perf_counter
    for path in files:
        t0 = clock()
        with open(path, "rb", buffering=0) as handle:
            data = handle.read()
        t1 = clock()
        hmac.digest(key, data, "sha256")
        t2 = clock()
        if len(data) > DEFAULT_MIN:
            cutter = FastCDC(DEFAULT_AVG, min_size=DEFAULT_MIN, max_size=DEFAULT_MAX)
            for _chunk in cutter.cut_buf(data):
                pass
        t3 = clock()
        packed = compressor.compress(data)
        kept = packed if len(packed) <= len(data) * (1 - MIN_SAVING) else data
        t4 = clock()
        aead.encrypt(nonce, kept, None)
        t5 = clock()
        for stage, spent in zip(seconds, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4),
                                strict=True):
            seconds[stage] += spent
        total += len(data)
        stored += len(kept)
    return {"seconds": seconds, "bytes": total, "stored_bytes": stored}


def write_floor(scratch: Path, size: int) -> float:
    """Seconds to write and fsync ``size`` bytes as one file (then it is removed)."""
    block = os.urandom(WRITE_BLOCK)
    path = scratch / "pack"
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        left = size
        while left > 0:
            left -= os.write(fd, memoryview(block)[:min(left, WRITE_BLOCK)])
        os.fsync(fd)
    finally:
        os.close(fd)
    spent = time.perf_counter() - started
    path.unlink()
    os.sync()
    return spent


def copy_floor(root: Path, scratch: Path, runs: int = 3) -> list[float]:
    """Seconds for each of ``runs`` ``cp -a`` of the tree into new directories (page cache
    warm, nothing dirty). Nothing is deleted in between: on ext4 without a journal, files
    created within minutes of a large ``rm -rf`` cost far more (see compare.py's
    ``set_aside``), so run this a few minutes after deleting big trees."""
    times = []
    for n in range(runs):
        os.sync()
        started = time.perf_counter()
        subprocess.run(["cp", "-a", str(root), str(scratch / f"copy-{n}")], check=True)
        times.append(time.perf_counter() - started)
    return times


def median_seconds(argv: list[str], env: dict[str, str], runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def fixed_costs(scratch: Path) -> dict[str, float]:
    """Per-command costs every step pays: key derivation and start-up."""
    from enigma.plugins.local_keys import DEFAULT_ARGON2, argon2_key

    started = time.perf_counter()
    argon2_key(PASSPHRASE, os.urandom(32), DEFAULT_ARGON2)
    costs = {"enigma_argon2id_unlock": time.perf_counter() - started}
    env = dict(os.environ)
    Enigma.prepare(shutil.which("enigma") or str(Path(sys.executable).with_name("enigma")))
    costs["enigma_start_and_imports"] = median_seconds(
        [sys.executable, "-c", "import enigma.cli, enigma.backup, enigma.restore"], env)
    restic = shutil.which("restic")
    if restic:
        repo = scratch / "restic"
        env.update(RESTIC_REPOSITORY=str(repo), RESTIC_PASSWORD=PASSPHRASE,
                   RESTIC_CACHE_DIR=str(scratch / "restic-cache"))
        subprocess.run([restic, "init", "--repository-version", "2"], env=env, check=True,
                       capture_output=True)
        costs["restic_cat_config"] = median_seconds([restic, "cat", "config"], env)
        shutil.rmtree(repo)
    return costs


def report(tree: dict[str, Any], cpu: dict[str, Any], write: float, copies: list[float],
           fixed: dict[str, float], cores: int) -> str:
    mb = tree["bytes"] / MB
    cpu_total = sum(cpu["seconds"].values())
    backup = max(cpu_total / cores, write)
    copy = min(copies)
    lines = [
        f"Tree: {tree['files']} files, {mb:.1f} MB; {cores} usable cores.",
        "",
        "| floor | seconds | MB/s of the tree | what it is |",
        "|---|---:|---:|---|",
        f"| restore: `cp -a` of the plain tree, best of {len(copies)} | {copy:.2f} | "
        f"{mb / copy:.0f} | creating the files and writing the bytes, nothing else (all: "
        + ", ".join(f"{c:.2f}" for c in copies) + " s) |",
        f"| backup: CPU stages on {cores} cores | {cpu_total / cores:.2f} | "
        f"{mb / (cpu_total / cores):.0f} | "
        + ", ".join(f"{k} {v:.2f}" for k, v in cpu["seconds"].items())
        + " s on one core |",
        f"| backup: write + fsync {cpu['stored_bytes'] / MB:.0f} MB as one file | {write:.2f} |"
        f" {mb / write:.0f} | the stored bytes, cheapest layout |",
        f"| backup: the larger of the two | {backup:.2f} | {mb / backup:.0f} | CPU and "
        "writes overlapped perfectly |",
    ]
    for name, seconds in fixed.items():
        lines.append(f"| per command: {name.replace('_', ' ')} | {seconds:.2f} | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path,
                        help="compare.py's workdir: its pristine/ tree is reused [a temp dir]")
    parser.add_argument("--scale", type=float, default=1.0, help="1 = about 1 GB")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="enigma-floors-"))
    work.mkdir(parents=True, exist_ok=True)
    root = work / "pristine"
    if not root.exists():
        print(f"# generating dataset (scale {args.scale}) in {root}", file=sys.stderr)
        generate(root, args.scale, args.seed)
    scratch = Path(tempfile.mkdtemp(prefix="floors-", dir=work))
    try:
        files = regular_files(root)
        for path in files:  # warm the page cache: every tool is measured warm
            with open(path, "rb") as handle:
                while handle.read(MiB):
                    pass
        cpu = cpu_floor(files)
        tree = {"files": len(files), "bytes": cpu["bytes"]}
        write = write_floor(scratch, cpu["stored_bytes"])
        copies = copy_floor(root, scratch)
        fixed = fixed_costs(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    cores = len(os.sched_getaffinity(0))
    print(report(tree, cpu, write, copies, fixed, cores))
    if args.json:
        args.json.write_text(json.dumps({
            "machine": machine_info({}), "tree": tree, "cpu": cpu, "write_seconds": write,
            "copy_seconds": copies, "fixed": fixed, "cores": cores}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
