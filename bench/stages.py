"""Stage micro-benchmark: how fast each step of Enigma's pipeline is, alone and together.

Measures MB/s on one core (one thread) and on all cores (one thread per core; every stage
here releases the GIL, so threads are the fair way to use the cores) for:

- FastCDC 2020 (pyfastcdc ``cut_buf``) with Enigma's default sizes (512 KiB/1 MiB/8 MiB),
- the keyed chunk id (HMAC-SHA256),
- zstd level 3 compression of text and of random data, and decompression of text,
- AES-256-GCM seal and open,
- the full pipeline in process: chunk -> id -> dedup check -> zstd -> seal -> store on a
  real local repository -> sync -> manifest rows (``enigma.pipeline.ChunkUploader``),
- ``enigma backup`` end to end (a child process over files in the page cache; "1 core"
  pins it to one CPU with sched_setaffinity, which also sizes its thread pool).

The figures the issue quotes are printed beside them for context. A benchmark, not a test.

Usage: ``python bench/stages.py [--mib 128] [--seconds 1.0] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import (
    PASSPHRASE,
    Enigma,
    busy_cpu_seconds,
    machine_info,
    own_cpu_seconds,
    run_measured,
)
from dataset import MB, Generator, MiB

from enigma.plugins.cdc import DEFAULT_AVG, DEFAULT_MAX, DEFAULT_MIN

ALL_CPUS = os.sched_getaffinity(0)
CHUNK = DEFAULT_AVG  # Enigma's average chunk size: the unit every per-chunk stage sees
#: Published figures, for context only (different machines, different code).
SEED_M3 = {"pipeline": 70.0, "aes-gcm-seal": 135.0}  # the seed's README, Apple M3 Pro
ISSUE_PER_CORE = {"cdc": 2200.0, "hmac-sha256": 1200.0, "zstd3-text": 130.0,
                  "aes-gcm-seal": 7000.0}  # issue 3, "this 2-core machine"


@dataclass
class Row:
    """One stage: MB/s on one core and on all cores."""

    stage: str
    data: str
    one_core: float
    all_cores: float
    note: str = ""


def pieces(buffer: bytes, size: int = CHUNK) -> list[memoryview]:
    view = memoryview(buffer)
    return [view[i:i + size] for i in range(0, len(view), size)]


def rate(work: Callable[[], int], seconds: float) -> float:
    """MB/s of ``work`` (returns bytes done), repeated until ``seconds`` have passed."""
    done, started = 0, time.perf_counter()
    while True:
        done += work()
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return done / MB / elapsed


def parallel_rate(make_work: Callable[[], Callable[[], int]], threads: int,
                  seconds: float) -> float:
    """Aggregate MB/s of ``threads`` threads, each running its own ``make_work()``."""
    if threads == 1:
        return rate(make_work(), seconds)
    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(lambda w: rate(w, seconds), [make_work() for _ in range(threads)]))


def primitive_rows(text: bytes, noise: bytes, cores: int, seconds: float) -> list[Row]:
    """Each stage alone over average-chunk pieces, one thread vs one thread per core."""
    import zstandard
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from pyfastcdc import FastCDC

    key = os.urandom(32)
    aead = AESGCM(key)
    nonce = os.urandom(12)
    sealed = [aead.encrypt(nonce, p, b"aad") for p in pieces(noise)]
    packed = [zstandard.ZstdCompressor(level=3).compress(p) for p in pieces(text)]

    def cdc() -> Callable[[], int]:
        def work() -> int:
            chunker = FastCDC(DEFAULT_AVG, min_size=DEFAULT_MIN, max_size=DEFAULT_MAX)
            return sum(len(c.data) for c in chunker.cut_buf(noise))
        return work

    def hmac_sha256() -> Callable[[], int]:
        def work() -> int:
            for p in pieces(noise):
                hmac.digest(key, p, "sha256")
            return len(noise)
        return work

    def zstd(data: bytes) -> Callable[[], Callable[[], int]]:
        def make() -> Callable[[], int]:
            cctx = zstandard.ZstdCompressor(level=3, write_content_size=True)

            def work() -> int:
                for p in pieces(data):
                    cctx.compress(p)
                return len(data)
            return work
        return make

    def unzstd() -> Callable[[], int]:
        dctx = zstandard.ZstdDecompressor()

        def work() -> int:
            for p in packed:
                dctx.decompress(p)
            return len(text)
        return work

    def seal() -> Callable[[], int]:
        def work() -> int:
            for p in pieces(noise):
                aead.encrypt(os.urandom(12), p, b"aad")
            return len(noise)
        return work

    def unseal() -> Callable[[], int]:
        def work() -> int:
            for s in sealed:
                aead.decrypt(nonce, s, b"aad")
            return len(noise)
        return work

    ratio = len(text) / sum(len(p) for p in packed)
    stages: list[tuple[str, str, Callable[[], Callable[[], int]], str]] = [
        ("cdc", "random", cdc, f"pyfastcdc cut_buf, avg {DEFAULT_AVG // MiB} MiB"),
        ("hmac-sha256", "random", hmac_sha256, "chunk id"),
        ("zstd3-text", "text", zstd(text), f"ratio {ratio:.2f}"),
        ("zstd3-random", "random", zstd(noise), "incompressible"),
        ("zstd-decompress", "text", unzstd, "restore side"),
        ("aes-gcm-seal", "random", seal, "AES-256-GCM encrypt"),
        ("aes-gcm-open", "random", unseal, "restore side"),
    ]
    rows = []
    for name, data, make, note in stages:
        one = parallel_rate(make, 1, seconds)
        every = parallel_rate(make, cores, seconds)
        rows.append(Row(name, data, one, every, note))
        print(f"  {name:<16} {one:9.1f} {every:9.1f} MB/s", file=sys.stderr)
    return rows


def new_repository(enigma: str, where: Path) -> Path:
    """A fresh repository with zstd 3 on (untimed): ``enigma init`` like a user would."""
    config_dir = where / f"repo-{time.monotonic_ns()}"
    config_dir.mkdir(mode=0o700, parents=True)
    (config_dir / "enigma.toml").write_text(Enigma.config)
    subprocess.run([enigma, "--config-dir", str(config_dir), "init"], check=True,
                   capture_output=True, env={**os.environ, "ENIGMA_PASSPHRASE": PASSPHRASE})
    return config_dir


def pipeline_rate(enigma: str, where: Path, data: bytes, cpus: set[int] | None) -> float:
    """MB/s of ChunkUploader storing ``data`` in a fresh repository (nothing deduplicates).

    With ``cpus`` the calling thread is pinned first; the pipeline's threads, made after,
    inherit that, and its CPU pool is sized from it, as in a pinned ``enigma backup``.
    """
    from enigma.chunkstore import ChunkStore
    from enigma.config import load_config
    from enigma.pipeline import ChunkUploader
    from enigma.plugin_manager import PluginManager
    from enigma.repository import Repository

    config_dir = new_repository(enigma, where)
    repo = Repository(load_config(config_dir), PluginManager(), lambda _confirm: PASSPHRASE)
    try:
        store = ChunkStore(repo)  # unlocks the keys (Argon2id) before the clock starts
        chunker = repo.chunker
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        started = time.perf_counter()
        uploader = ChunkUploader(store)
        try:
            futures = [uploader.submit(piece) for piece in chunker.chunks_of(data)]
            records = [r for r in (f.result().record for f in futures) if r is not None]
            uploader.sync()
            repo.manifest.add_chunks(records)
        finally:
            uploader.close()
        return len(data) / MB / (time.perf_counter() - started)
    finally:
        os.sched_setaffinity(0, ALL_CPUS)
        repo.close()
        shutil.rmtree(config_dir, ignore_errors=True)


def cli_rate(enigma: str, where: Path, source: Path, size: int, cpus: set[int] | None,
             ) -> tuple[float, float]:
    """(MB/s, peak RSS MiB) of ``enigma backup`` of ``source`` into a fresh repository."""
    config_dir = new_repository(enigma, where)
    argv = [enigma, "--config-dir", str(config_dir), "backup", str(source)]
    if cpus is not None:
        argv = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *argv]
    os.sync()
    try:
        measured = run_measured(argv, {**os.environ, "ENIGMA_PASSPHRASE": PASSPHRASE},
                                where / "logs", f"backup-{time.monotonic_ns()}")
        if measured.code != 0:
            raise RuntimeError(f"{shlex.join(argv)} exited {measured.code}: "
                               f"{measured.stderr.strip()[-2000:]}")
        return size / MB / measured.wall, measured.rss_kib / 1024
    finally:
        shutil.rmtree(config_dir, ignore_errors=True)


def pipeline_rows(enigma: str, where: Path, text: bytes, noise: bytes, cores: int,
                  ) -> list[Row]:
    rows = []
    first_cpu = {min(ALL_CPUS)}
    for name, data in (("text", text), ("random", noise)):
        one = pipeline_rate(enigma, where, data, first_cpu)
        every = pipeline_rate(enigma, where, data, None)
        rows.append(Row("pipeline", name, one, every,
                        "ChunkUploader: id, dedup, zstd, seal, local store, sync"))
        print(f"  pipeline {name:<8} {one:9.1f} {every:9.1f} MB/s", file=sys.stderr)

    source = where / "files"
    quarter = len(text) // 4
    for i in range(4):  # 8 files, half text, half random, in the page cache
        part = slice(i * quarter, (i + 1) * quarter)
        (source / f"t{i}").mkdir(parents=True, exist_ok=True)
        (source / f"t{i}" / "text.log").write_bytes(text[part])
        (source / f"t{i}" / "noise.bin").write_bytes(noise[part])
    size = 8 * quarter
    os.sync()
    for path in source.rglob("*"):
        if path.is_file():
            path.read_bytes()  # warm
    one, rss_one = cli_rate(enigma, where, source, size,
                            first_cpu if shutil.which("taskset") else None)
    every, rss_every = cli_rate(enigma, where, source, size, None)
    rows.append(Row("enigma backup", "mixed", one, every,
                    f"CLI end to end, peak RSS {rss_one:.0f} / {rss_every:.0f} MiB"))
    print(f"  enigma backup    {one:9.1f} {every:9.1f} MB/s", file=sys.stderr)
    return rows


def markdown(report: dict[str, Any]) -> str:
    m, cores = report["machine"], report["cores"]
    lines = [
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        f"Machine: {m['nproc']} CPUs ({m['usable_cpus']} usable), {m['cpu']}, "
        f"Linux {m['kernel']}, Python {m['python']}, {m['versions'].get('enigma', '')}, "
        f"commit {m['enigma_revision']}  ",
        f"Load: other processes used {m['other_cores']:.2f} of {m['usable_cpus']} cores on "
        "average during the run"
        + (" - NOT IDLE, numbers are indicative only" if report["busy"] else " (idle)") + "  ",
        f"Input: {report['mib']} MiB of text and {report['mib']} MiB of random data, "
        f"{CHUNK // MiB} MiB pieces; each figure is sustained for >= {report['seconds']} s.",
        "",
        f"| stage | data | MB/s, 1 core | MB/s, {cores} cores | scaling | "
        "seed, M3 Pro | issue 3, per core | note |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["rows"]:
        key = "pipeline" if r["stage"] in ("pipeline", "enigma backup") else r["stage"]
        seed = SEED_M3.get(key)
        issue = ISSUE_PER_CORE.get(r["stage"])
        lines.append(
            f"| {r['stage']} | {r['data']} | {r['one_core']:.1f} | {r['all_cores']:.1f} | "
            f"{r['all_cores'] / r['one_core']:.2f}x | {f'{seed:.0f}' if seed else '-'} | "
            f"{f'{issue:.0f}' if issue else '-'} | {r['note']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=128, help="MiB of text and of random data")
    parser.add_argument("--seconds", type=float, default=1.0, help="minimum time per figure")
    parser.add_argument("--workdir", type=Path, help="for the repositories [a temp dir]")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--enigma", metavar="PATH", help="the enigma executable")
    parser.add_argument("--skip-pipeline", action="store_true",
                        help="only the primitives (no repository, no disk writes)")
    args = parser.parse_args(argv)

    enigma = Enigma.find(args.enigma)
    if enigma is None:
        parser.error("enigma is not installed (pip install -e .)")
    cores = len(os.sched_getaffinity(0))
    machine = machine_info({"enigma": enigma})
    started, busy_before, own_before = time.monotonic(), busy_cpu_seconds(), own_cpu_seconds()
    gen = Generator(42)
    text, noise = gen.text(args.mib * MiB), gen.random(args.mib * MiB)
    print(f"# stages on {cores} cores, {args.mib} MiB inputs", file=sys.stderr)
    rows = primitive_rows(text, noise, cores, args.seconds)
    if not args.skip_pipeline:
        owns = args.workdir is None
        where = Path(tempfile.mkdtemp(prefix="enigma-stages-")) if owns else args.workdir
        where.mkdir(parents=True, exist_ok=True)
        try:
            rows += pipeline_rows(enigma, where.resolve(), text, noise, cores)
        finally:
            if owns:
                shutil.rmtree(where, ignore_errors=True)
    others = (busy_cpu_seconds() - busy_before) - (own_cpu_seconds() - own_before)
    machine["other_cores"] = max(0.0, others / (time.monotonic() - started))
    report = {
        "command": shlex.join(["python", "bench/stages.py", *(argv or sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine, "cores": cores,
        "busy": machine["other_cores"] > 0.1 * cores, "mib": args.mib,
        "seconds": args.seconds, "rows": [asdict(r) for r in rows],
    }
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
