"""Three ``enigma serve`` nodes sharing their manifest through Raft: small-PUT throughput
beside a single node, and failover after the leader is SIGKILLed.

    .venv/bin/python bench/raft.py                     # 20 s per setup, 10 kills
    .venv/bin/python bench/raft.py --quick             # smoke run: 3 s per setup, 2 kills
    .venv/bin/python bench/raft.py --repeat 3 --json out.json

The cluster is the one the Raft tests build (``plugins/raft/tests/cluster_support.py``):
one ``enigma init``, the keystore copied to every node, one local storage directory all
nodes declare ``shared = true``, loopback ports. Measured, in one run:

1. **small PUT**: ``--threads`` (8) boto3 clients (one per thread, path-style, retries off)
   PUT distinct random ``--size-kib`` (4) KiB objects in a closed loop for ``--seconds``
   (20) after ``--warmup`` (2) seconds; ops/s and p50 / p99 latency of the calls that end
   in the measured window, and the servers' peak RSS (VmHWM from /proc, reset when the
   window opens; sum over nodes / largest node). Three setups, each on a fresh repository:
   one node without ``[raft]``; three nodes with the threads spread round-robin over
   them; three nodes with every thread on the leader. Medians over ``--repeat``.
2. **failover**: on a fresh cluster under a light writer load (``--writers`` threads,
   each PUT followed by a 50 ms pause, round-robin over all nodes), ``--kills`` (10)
   times: SIGKILL the leader's process group; time until both survivors agree on a new
   leader (their status polled every ``--poll-ms``), until a PUT through a survivor
   succeeds (first survivor / both); restart the killed node on its ``data_dir`` and time
   until it has applied everything the leader had committed. At the end every
   acknowledged write is looked up (HEAD): a missing one is a lost write.

A benchmark, not a test: the client and every node share the machine's cores, so numbers
depend on the machine and what else runs on it (the load is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import itertools
import json
import os
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests"), str(ROOT / "plugins/raft/tests")]

from botocore.exceptions import (  # noqa: E402
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from cluster_support import Cluster, Node, wait_for  # noqa: E402  (the tests' real cluster)
from compare import busy_cpu_seconds, machine_info, own_cpu_seconds  # noqa: E402
from gateway import peak_rss_mib, percentile, reset_peak, run_parallel  # noqa: E402

BUCKET = "raft-bench"
SETUPS = {"single": "1 node, no [raft]", "round_robin": "3 nodes, threads round-robin",
          "leader": "3 nodes, all threads to the leader"}
#: The issue's targets for the cluster against one node.
TARGET_P50_MS = 25.0
TARGET_SHARE = 0.40
#: A failover step that takes longer than this is a failure, not a number.
FAILOVER_TIMEOUT = 60.0
#: Writers' pause after each PUT during kills: a trickle that sees every outage.
WRITER_PAUSE = 0.05


def kind_of(exc: Exception) -> str:
    """A short name for a failed call, so the report can tell 503s from dead sockets."""
    if isinstance(exc, ClientError):
        meta = exc.response.get("ResponseMetadata", {})
        return str(meta.get("HTTPStatusCode") or exc.response.get("Error", {}).get("Code"))
    if isinstance(exc, EndpointConnectionError):
        return "refused"
    if isinstance(exc, ConnectionClosedError):
        return "reset"
    if isinstance(exc, ReadTimeoutError):
        return "timeout"
    return type(exc).__name__


class Putters:
    """Threads PUTting new random objects in a loop, every call timed and every failure
    kept with its kind: throughput, latency and availability come from the same records.

    Thread ``n`` sends its requests round-robin over ``routes[n]`` (one node: a fixed
    target), pausing ``pause`` seconds after each success (0: a closed loop). The threads
    start at once; ``close`` stops them."""

    def __init__(self, routes: list[list[Node]], size: int, pause: float = 0.0,
                 prefix: str = "p") -> None:
        self.clients = [[node.client() for node in route] for route in routes]
        self.size, self.pause, self.prefix = size, pause, prefix
        self.done: list[tuple[float, float, str]] = []  # (end, seconds, key)
        self.failed: list[tuple[float, str]] = []  # (end, kind)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True)
                         for n in range(len(routes))]
        for thread in self._threads:
            thread.start()

    def _run(self, number: int) -> None:
        clients = self.clients[number]
        for count in itertools.count():
            if self._stop.is_set():
                return
            key = f"{self.prefix}{number}/{count:07d}"
            body = os.urandom(self.size)
            started = time.perf_counter()
            try:
                clients[count % len(clients)].put_object(Bucket=BUCKET, Key=key, Body=body)
            except (ClientError, BotoCoreError) as exc:
                self.failed.append((time.perf_counter(), kind_of(exc)))
                self._stop.wait(max(self.pause, 0.05))  # no hot loop against a dead node
                continue
            ended = time.perf_counter()
            self.done.append((ended, ended - started, key))
            if self.pause:
                self._stop.wait(self.pause)

    def window(self, start: float, end: float) -> tuple[list[float], Counter[str]]:
        """Latencies of the successes and kinds of the failures that ended in the window."""
        return ([s for t, s, _ in self.done if start <= t <= end],
                Counter(k for t, k in self.failed if start <= t <= end))

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time in the window without any acknowledged PUT: the outage as the
        writers saw it."""
        ends = sorted([start, end, *(t for t, _, _ in self.done if start <= t <= end)])
        return max(b - a for a, b in itertools.pairwise(ends))

    def close(self) -> None:
        """Stop sending; calls in flight are let finish (and still recorded)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


# --------------------------------------------------------------------------- servers


@contextlib.contextmanager
def single_node(root: Path) -> Iterator[Cluster]:
    """One ``enigma serve`` built exactly like a cluster node (same kind of repository,
    credentials and environment) but with its ``[raft]`` table cut off: the baseline."""
    cluster = Cluster.create(root, size=1)
    config = cluster.nodes[0].config_dir / "enigma.toml"
    config.write_text(config.read_text().split("\n[raft]\n")[0])
    try:
        cluster.start(cluster.nodes[0])
        yield cluster
    finally:
        cluster.stop_all()


@contextlib.contextmanager
def three_nodes(root: Path) -> Iterator[Cluster]:
    """A fresh 3-node cluster with a leader; every process stopped on the way out."""
    cluster = Cluster.create(root)
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.stop_all()


def pid_of(node: Node) -> int:
    assert node.process is not None and node.process.process is not None
    return node.process.process.pid


# --------------------------------------------------------------------------- small PUT


def put_load(targets: list[Node], everyone: list[Node], args: argparse.Namespace
             ) -> dict[str, Any]:
    """Closed-loop PUTs from ``args.threads`` threads, thread n on ``targets[n % len]``;
    peak RSS over ``everyone`` (followers work too when only the leader is addressed)."""
    targets[0].client().create_bucket(Bucket=BUCKET)
    routes = [[targets[n % len(targets)]] for n in range(args.threads)]
    pids = [pid_of(node) for node in everyone]
    putters = Putters(routes, args.size_kib * 1024)
    try:
        time.sleep(args.warmup)
        for pid in pids:
            reset_peak(pid)
        start = time.perf_counter()
        time.sleep(args.seconds)
        end = time.perf_counter()
        rss = [peak_rss_mib(pid) for pid in pids]
    finally:
        putters.close()
    latencies, failures = putters.window(start, end)
    if not latencies:
        raise RuntimeError(f"no PUT succeeded in {args.seconds:g} s ({dict(failures)})")
    return {"ops_per_s": len(latencies) / (end - start), "ops": len(latencies),
            "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000,
            "errors": sum(failures.values()), "error_kinds": dict(failures),
            "rss_sum_MiB": sum(rss), "rss_max_MiB": max(rss)}


def throughput_run(setup: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    if setup == "single":
        with single_node(root) as cluster:
            return put_load(cluster.nodes, cluster.nodes, args)
    with three_nodes(root) as cluster:
        if setup == "round_robin":
            return put_load(cluster.nodes, cluster.nodes, args)
        leader = cluster.wait_for_leader()
        numbers = put_load([leader], cluster.nodes, args)
        numbers["leader_changed"] = cluster.leader() is not leader
        return numbers


def throughput(args: argparse.Namespace, work: Path, failures: list[str]
               ) -> dict[str, Any]:
    """Every setup ``--repeat`` times on fresh repositories, in a rotating order."""
    runs: dict[str, list[dict[str, Any]]] = {setup: [] for setup in SETUPS}
    names = list(SETUPS)
    for repeat in range(args.repeat):
        for setup in names[repeat % 3:] + names[:repeat % 3]:
            print(f"# small PUT, run {repeat + 1}/{args.repeat}: {SETUPS[setup]}",
                  file=sys.stderr, flush=True)
            try:
                numbers = throughput_run(setup, work / f"put-{repeat}-{setup}", args)
            except Exception as exc:  # reported, the rest still runs
                failures.append(f"small PUT, {SETUPS[setup]}, run {repeat + 1}: {exc}")
                continue
            runs[setup].append(numbers)
            print(f"  {numbers['ops_per_s']:.0f} ops/s, p50 {numbers['p50_ms']:.1f} ms, "
                  f"{numbers['errors']} errors", file=sys.stderr, flush=True)
    medians = {setup: {key: statistics.median(r[key] for r in rs)
                       for key in ("ops_per_s", "p50_ms", "p99_ms", "errors",
                                   "rss_sum_MiB", "rss_max_MiB")} | {"n": len(rs)}
               for setup, rs in runs.items() if rs}
    return {"runs": runs, "medians": medians, "targets": targets(medians)}


def targets(medians: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """3-node PUT p50 <= 25 ms and >= 40% of single-node ops/s, for both ways of sending."""
    rows: list[dict[str, Any]] = []
    single = medians.get("single")
    for setup in ("round_robin", "leader"):
        mine = medians.get(setup)
        how = SETUPS[setup].removeprefix("3 nodes, ")
        rows.append({"target": f"3-node PUT p50 <= {TARGET_P50_MS:g} ms ({how})",
                     "measured": f"{mine['p50_ms']:.1f} ms" if mine else None,
                     "met": mine["p50_ms"] <= TARGET_P50_MS if mine else None})
        share = mine["ops_per_s"] / single["ops_per_s"] if mine and single else None
        rows.append({"target": f"3-node PUT >= {TARGET_SHARE:.0%} of single-node ops/s "
                               f"({how})",
                     "measured": None if share is None else f"{share:.0%}",
                     "met": None if share is None else share >= TARGET_SHARE})
    return rows


# --------------------------------------------------------------------------- failover


class Probes:
    """One thread per survivor that, from the kill on, PUTs until one PUT succeeds: when
    clients can write again, whatever the cluster says about its leader."""

    def __init__(self, survivors: list[Node], size: int, label: str) -> None:
        self.size, self.label = size, label
        self.took: dict[str, float] = {}  # node -> seconds from the kill to its first 200
        self.keys: list[str] = []
        self.errors: Counter[str] = Counter()
        self.killed_at = 0.0
        self._go, self._stop = threading.Event(), threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n, n.client(connect_timeout=1)),
                                          daemon=True) for n in survivors]
        for thread in self._threads:
            thread.start()

    def go(self, killed_at: float) -> None:
        self.killed_at = killed_at
        self._go.set()

    def _run(self, node: Node, client: Any) -> None:
        self._go.wait()
        for attempt in itertools.count():
            if self._stop.is_set() or time.perf_counter() - self.killed_at > FAILOVER_TIMEOUT:
                return
            key = f"probe/{self.label}/{node.name}/{attempt}"
            try:
                client.put_object(Bucket=BUCKET, Key=key, Body=os.urandom(self.size))
            except (ClientError, BotoCoreError) as exc:
                self.errors[kind_of(exc)] += 1
                time.sleep(0.02)
                continue
            self.took[node.name] = time.perf_counter() - self.killed_at
            self.keys.append(key)
            return

    def join(self, timeout: float) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def close(self) -> None:
        self._stop.set()
        self._go.set()
        self.join(10)


def elect(cluster: Cluster, old: Node, killed_at: float, poll: float) -> tuple[Node, float]:
    """Poll the survivors until they all name one leader other than ``old``."""
    while True:
        leader = cluster.leader()  # None unless every running node names the same one
        elapsed = time.perf_counter() - killed_at
        if leader is not None and leader is not old:
            return leader, elapsed
        if elapsed > FAILOVER_TIMEOUT:
            raise RuntimeError(f"no new leader {FAILOVER_TIMEOUT:g} s after the kill")
        time.sleep(poll)


def kill_round(cluster: Cluster, number: int, args: argparse.Namespace,
               writers: Putters | None) -> dict[str, Any]:
    old = cluster.wait_for_leader()
    survivors = [n for n in cluster.nodes if n is not old]
    probes = Probes(survivors, args.size_kib * 1024, str(number))
    try:
        assert old.process is not None
        killed_at = time.perf_counter()
        old.process.kill()  # SIGKILL to the process group, then reaped: surely dead
        probes.go(killed_at)
        new, elected = elect(cluster, old, killed_at, args.poll_ms / 1000)
        probes.join(FAILOVER_TIMEOUT)
    finally:
        probes.close()
    took = probes.took
    restarted = time.perf_counter()
    cluster.start(old)  # same config, same data_dir
    target = new.status()["commit_idx"]
    wait_for(lambda: old.status()["last_applied"] >= target and cluster.leader() is not None,
             FAILOVER_TIMEOUT, f"{old.name} to catch up")
    caught_up = time.perf_counter()
    after = cluster.leader()
    row: dict[str, Any] = {
        "killed": old.name, "new_leader": new.name, "elected_ms": elected * 1000,
        "first_put_ms": min(took.values()) * 1000 if took else None,
        "all_put_ms": max(took.values()) * 1000 if len(took) == len(survivors) else None,
        "rejoin_s": caught_up - restarted, "catch_up_to_index": target,
        "leader_after_rejoin": after.name if after else None,
        "probe_errors": dict(probes.errors), "probe_keys": probes.keys}
    if writers is not None:
        latencies, failures = writers.window(killed_at, caught_up)
        row |= {"writer_ok": len(latencies), "writer_errors": dict(failures),
                "writer_gap_ms": writers.longest_gap(killed_at, caught_up) * 1000}
    return row


def missing_writes(node: Node, keys: list[str]) -> list[str]:
    """Acknowledged keys a node does not have (HEAD, 4 threads): lost writes."""
    client, missing = node.client(), []

    def head(key: str) -> None:
        try:
            client.head_object(Bucket=BUCKET, Key=key)
        except ClientError as exc:
            if kind_of(exc) != "404":
                raise
            missing.append(key)

    run_parallel(4, keys, head)
    return missing


def failover(args: argparse.Namespace, work: Path, failures: list[str]) -> dict[str, Any]:
    """``--kills`` rounds of kill / elect / restart / catch up on one cluster."""
    rounds: list[dict[str, Any]] = []
    out: dict[str, Any] = {"rounds": rounds}
    with three_nodes(work / "failover") as cluster:
        cluster.nodes[0].client().create_bucket(Bucket=BUCKET)
        routes = [cluster.nodes[n % 3:] + cluster.nodes[:n % 3] for n in range(args.writers)]
        with contextlib.ExitStack() as stack:
            writers = None
            if args.writers:
                writers = Putters(routes, args.size_kib * 1024, WRITER_PAUSE, "w")
                stack.callback(writers.close)
            time.sleep(1.0)  # writers under way before the first kill
            for number in range(args.kills):
                try:
                    row = kill_round(cluster, number, args, writers)
                except Exception as exc:  # the cluster's state is unknown
                    failures.append(f"failover, kill {number + 1}: {exc}")
                    break
                rounds.append(row)
                print(f"# kill {number + 1}/{args.kills}: {row['killed']} -> "
                      f"{row['new_leader']} in {row['elected_ms']:.0f} ms, first PUT "
                      f"{fmt(row['first_put_ms'], '{:.0f}')} ms, rejoined in "
                      f"{row['rejoin_s']:.1f} s", file=sys.stderr, flush=True)
                time.sleep(1.0)  # let the rejoined node settle before the next kill
        acknowledged = [key for row in rounds for key in row.pop("probe_keys")]
        if writers is not None:
            acknowledged += [key for _, _, key in writers.done]
            out["writers"] = {"threads": args.writers, "ok": len(writers.done),
                              "errors": dict(Counter(k for _, k in writers.failed))}
        checker = cluster.leader() or cluster.running()[0]
        try:
            missing = missing_writes(checker, acknowledged)
        except Exception as exc:  # the rounds measured are still reported
            failures.append(f"failover: checking acknowledged PUTs on {checker.name}: {exc}")
            missing = None
        out |= {"acknowledged": len(acknowledged), "missing": (missing or [])[:20],
                "missing_count": None if missing is None else len(missing)}
        if missing:
            failures.append(f"failover: {len(missing)} acknowledged PUT(s) missing on "
                            f"{checker.name}, e.g. {missing[0]}")
    summary: dict[str, dict[str, float]] = {}
    for key in ("elected_ms", "first_put_ms", "all_put_ms", "rejoin_s"):
        values = [r[key] for r in rounds if r[key] is not None]
        if values:
            summary[key] = {"median": statistics.median(values), "max": max(values),
                            "n": len(values)}
    out["summary"] = summary
    return out


# --------------------------------------------------------------------------- report


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def errors_cell(kinds: dict[str, int]) -> str:
    return ", ".join(f"{n} x {k}" for k, n in sorted(kinds.items())) or "0"


def markdown(report: dict[str, Any]) -> str:
    m, args = report["machine"], report["args"]
    lines = [
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        f"Machine: {m['nproc']} CPUs ({m['usable_cpus']} usable), {m['cpu']}, {m['memory']} "
        f"RAM, Linux {m['kernel']}, Python {m['python']}, pysyncobj {m['pysyncobj']}; "
        f"Enigma commit {m['enigma_revision']}  ",
        f"Load: 1-min load average {m['loadavg_start'][0]:.2f} before the run; other "
        f"processes used {m['other_cores']:.2f} of {m['usable_cpus']} cores on average "
        "during it" + (" - NOT IDLE, numbers are indicative only" if report["busy"]
                       else " (idle)"),
    ]
    put = report.get("throughput")
    if put:
        med = put["medians"]
        single = med.get("single", {}).get("ops_per_s")
        lines += ["", f"### small PUT: {args['size_kib']} KiB objects, {args['threads']} "
                  f"threads, {args['seconds']:g} s after {args['warmup']:g} s warm-up "
                  f"(medians of {args['repeat']} run(s), fresh repository each)", "",
                  "| setup | ops/s | % of single node | p50 ms | p99 ms | errors | "
                  "server peak RSS MiB (sum / max node) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for setup, title in SETUPS.items():
            s = med.get(setup)
            if not s:
                lines.append(f"| {title} | failed | | | | | |")
                continue
            share = f"{s['ops_per_s'] / single:.0%}" if single else "-"
            lines.append(f"| {title} | {s['ops_per_s']:.0f} | {share} | {s['p50_ms']:.1f} | "
                         f"{s['p99_ms']:.1f} | {s['errors']:.0f} | {s['rss_sum_MiB']:.0f} / "
                         f"{s['rss_max_MiB']:.0f} |")
        lines += ["", "| target | measured | |", "|---|---|---|"]
        for row in put["targets"]:
            met = {True: "met", False: "**NOT met**", None: "n/a"}[row["met"]]
            lines.append(f"| {row['target']} | {row['measured'] or 'n/a'} | {met} |")
    fail = report.get("failover")
    if fail:
        writers = f"{args['writers']} writer thread(s)" if args["writers"] else "no writers"
        lines += ["", f"### failover: leader SIGKILLed {len(fail['rounds'])} time(s) "
                  f"({writers}, status polled every {args['poll_ms']:g} ms)", "",
                  "| kill | killed | new leader | leader elected ms | first PUT ok ms | "
                  "PUT ok via both survivors ms | restart + catch-up s | writers ok | "
                  "writer errors | longest writer gap ms |",
                  "|---:|---|---|---:|---:|---:|---:|---:|---|---:|"]
        for number, r in enumerate(fail["rounds"], 1):
            lines.append(
                f"| {number} | {r['killed']} | {r['new_leader']} | {r['elected_ms']:.0f} | "
                f"{fmt(r['first_put_ms'], '{:.0f}')} | {fmt(r['all_put_ms'], '{:.0f}')} | "
                f"{r['rejoin_s']:.1f} | {r.get('writer_ok', '-')} | "
                f"{errors_cell(r.get('writer_errors', {}))} | "
                f"{fmt(r.get('writer_gap_ms'), '{:.0f}')} |")
        s = fail["summary"]
        for stat in ("median", "max"):
            cells = [fmt(s.get(k, {}).get(stat), spec) for k, spec in (
                ("elected_ms", "{:.0f}"), ("first_put_ms", "{:.0f}"),
                ("all_put_ms", "{:.0f}"), ("rejoin_s", "{:.1f}"))]
            lines.append(f"| {stat} | | | " + " | ".join(cells) + " | | | |")
        changed = [n for n, r in enumerate(fail["rounds"], 1)
                   if r["leader_after_rejoin"] != r["new_leader"]]
        lines += ["", f"Acknowledged PUTs checked afterwards: {fail['acknowledged']}, "
                  f"missing: {fmt(fail['missing_count'], '{}')}.  "]
        probed = [f"kill {n}: {errors_cell(r['probe_errors'])}"
                  for n, r in enumerate(fail["rounds"], 1) if r["probe_errors"]]
        if probed:
            lines.append("Failed probe PUTs through the survivors: " + "; ".join(probed)
                         + ".  ")
        if changed:
            lines.append(f"Leader changed again when the killed node rejoined: kill(s) "
                         f"{', '.join(map(str, changed))}.  ")
    if report["failures"]:
        lines += ["", "### failures", ""] + [f"- {f}" for f in report["failures"]]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: --seconds 3 --warmup 1 --kills 2 unless given")
    parser.add_argument("--seconds", type=float, help="measured window per setup [20]")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds before it [2]")
    parser.add_argument("--kills", type=int, help="leader kills in the failover part [10]")
    parser.add_argument("--repeat", type=int, default=1, help="small-PUT runs per setup")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--size-kib", type=int, default=4)
    parser.add_argument("--writers", type=int, default=2,
                        help="light writer threads during the kills (0: none)")
    parser.add_argument("--poll-ms", type=float, default=25, help="leader status polling")
    parser.add_argument("--parts", default="throughput,failover")
    parser.add_argument("--workdir", type=Path, help="where the repositories go [temp dir]")
    parser.add_argument("--keep", action="store_true", help="keep repositories and logs")
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args(argv)
    for name, normal, quick in (("seconds", 20.0, 3.0), ("warmup", 2.0, 1.0),
                                ("kills", 10, 2)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else normal)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if parts - {"throughput", "failover"}:
        parser.error("--parts takes throughput, failover or both")
    # SIGTERM unwinds like Ctrl-C, through every finally that stops a server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    owns_work = args.workdir is None
    work = (Path(tempfile.mkdtemp(prefix="enigma-raftbench-")) if owns_work
            else args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    machine = machine_info({}) | {"pysyncobj": importlib.metadata.version("pysyncobj")}
    print(f"# {os.cpu_count()} cores, load average {os.getloadavg()}, workdir {work}",
          file=sys.stderr, flush=True)
    started, busy_before, own_before = time.monotonic(), busy_cpu_seconds(), own_cpu_seconds()
    failures: list[str] = []
    report: dict[str, Any] = {"command": shlex.join(["python", "bench/raft.py",
                                                     *(argv or sys.argv[1:])]),
                              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                              "args": {k: str(v) if isinstance(v, Path) else v
                                       for k, v in vars(args).items()}}
    try:
        if "throughput" in parts:
            report["throughput"] = throughput(args, work, failures)
        if "failover" in parts:
            try:
                report["failover"] = failover(args, work, failures)
            except Exception as exc:  # reported with what was measured
                failures.append(f"failover: {exc}")
    finally:
        if owns_work and not args.keep and not failures:
            shutil.rmtree(work, ignore_errors=True)
    others = (busy_cpu_seconds() - busy_before) - (own_cpu_seconds() - own_before)
    machine["other_cores"] = max(0.0, others / (time.monotonic() - started))
    ncpu = machine["usable_cpus"]
    report |= {"machine": machine, "failures": failures,
               "busy": machine["other_cores"] > 0.1 * ncpu
               or machine["loadavg_start"][0] > 0.5 * ncpu}
    print(markdown(report))
    if failures and owns_work and not args.keep:
        print(f"\nServer logs kept in {work}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
