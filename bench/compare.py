"""Side-by-side benchmark: Enigma against restic and borg on the same data, machine and run.

Every tool runs with its default authenticated encryption and compression on (Enigma:
AES-256-GCM + zstd 3; restic: repository v2, compression ``auto``; borg: repokey-blake2 +
zstd,3). For each repeat and tool, with a fresh repository: init, initial backup, no-change
re-backup, backup after a ~5% mutation, full restore of the latest backup followed by a
bit-exact comparison with the source tree. Each step is one child process, timed with
``perf_counter`` and measured with ``wait4`` (peak RSS and CPU seconds of exactly that
child, started from a small launcher so this script's own memory does not leak into the
figure), and the repository is ``du``-ed after it. Medians over ``--repeat``.

The page cache is not dropped (that needs root and is not portable): instead every tool's
source tree is synced and read once, untimed, before its first timed step, so all tools
start warm. This is a benchmark, not a test: numbers depend on the machine and its load.

Usage: ``python bench/compare.py --scale 1 --repeat 3 [--tools enigma,restic,borg]
[--workdir DIR] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dataset import MB, generate, mutate

MiB = 1024 * 1024
PASSPHRASE = "bench-passphrase-not-secret"
STEPS = ("init", "backup", "rebackup", "mutated", "restore")
TITLES = {
    "init": "init (fresh repository)",
    "backup": "initial backup",
    "rebackup": "no-change re-backup",
    "mutated": "backup after ~5% mutation",
    "restore": "full restore of the latest backup (then bit-exact check)",
}
#: Steps whose MB/s (dataset bytes / wall) is the figure of merit; the rest compare wall time.
THROUGHPUT_STEPS = ("backup", "restore")
#: The issue's targets for Enigma relative to restic (and absolute peak RSS).
RSS_TARGET_MIB = 200


# --------------------------------------------------------------------------- processes


@dataclass
class Measured:
    """One child process: wall seconds, CPU seconds (user + system, its threads and
    children), peak RSS (KiB; both from wait4) and its exit code."""

    argv: list[str]
    wall: float
    cpu: float
    rss_kib: int
    code: int
    stdout: str
    stderr: str


#: Starts the measured command from a small process: on Linux a child's ru_maxrss also
#: counts the memory of the process it was forked or vforked from (exec records the old
#: mm's high-water mark), so a command started straight from this script would inherit
#: this script's RSS. The launcher is ~10 MiB, which is then the floor of every figure.
LAUNCHER = """\
import json, os, signal, sys, time
timeout, result, argv = float(sys.argv[1]), sys.argv[2], sys.argv[3:]
started = time.perf_counter()
try:
    pid = os.posix_spawnp(argv[0], argv, os.environ)
except OSError as exc:
    print(f"cannot run {argv[0]}: {exc}", file=sys.stderr)
    sys.exit(127)
signal.signal(signal.SIGALRM, lambda *_: os.kill(pid, signal.SIGKILL))
signal.setitimer(signal.ITIMER_REAL, timeout)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - started
with open(result, "w") as f:
    json.dump({"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_kib": usage.ru_maxrss,
               "code": os.waitstatus_to_exitcode(status)}, f)
"""


def run_measured(argv: list[str], env: dict[str, str], log_dir: Path, label: str, *,
                 cwd: Path | None = None, timeout: float = 3600) -> Measured:
    """Run a command and measure exactly it: wall time and its own peak RSS (``wait4``),
    through ``LAUNCHER`` so that neither this script's memory nor earlier children count."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / f"{label}.out", log_dir / f"{label}.err"
    result_path = log_dir / f"{label}.rusage.json"
    launcher = [sys.executable, "-I", "-S", "-c", LAUNCHER, str(timeout), str(result_path)]
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        code = subprocess.run(launcher + argv, stdout=out, stderr=err,
                              stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                              check=False).returncode
    stdout, stderr = (p.read_text(errors="replace") for p in (out_path, err_path))
    if code != 0 or not result_path.exists():
        return Measured(argv, 0.0, 0.0, 0, code or 127, stdout, stderr)
    usage = json.loads(result_path.read_text())
    return Measured(argv, usage["wall"], usage["cpu"], usage["rss_kib"], usage["code"],
                    stdout, stderr)


def disk_usage(*paths: Path) -> tuple[int, int]:
    """(bytes allocated on disk, like ``du -s``; apparent bytes): what a repository costs,
    and how much of that is file-system slack (many tiny objects)."""
    allocated = apparent = 0
    for root in paths:
        if not root.exists():
            continue
        allocated += os.lstat(root).st_blocks * 512
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                with contextlib.suppress(FileNotFoundError):
                    st = os.lstat(os.path.join(dirpath, name))
                    allocated += st.st_blocks * 512
                    apparent += st.st_size if name in filenames else 0
    return allocated, apparent


# --------------------------------------------------------------------------- tree digests


def tree_digest(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root``: type, and content hash or symlink target. Reading every
    file also warms the page cache, which is why the source is digested before timing."""
    entries: dict[str, tuple[Any, ...]] = {}
    stack = [root]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as it:
            for entry in it:
                rel = os.path.relpath(entry.path, root)
                if entry.is_symlink():
                    entries[rel] = ("symlink", os.readlink(entry.path))
                elif entry.is_dir(follow_symlinks=False):
                    entries[rel] = ("dir",)
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    with open(entry.path, "rb") as f:
                        digest = hashlib.file_digest(f, "sha256").hexdigest()
                    entries[rel] = ("file", entry.stat(follow_symlinks=False).st_size, digest)
                else:
                    entries[rel] = ("other", entry.stat(follow_symlinks=False).st_mode)
    return entries


def tree_size(digest: dict[str, tuple[Any, ...]]) -> tuple[int, int]:
    """(regular files, bytes) of a digested tree."""
    files = [v for v in digest.values() if v[0] == "file"]
    return len(files), sum(v[1] for v in files)


def differences(expected: dict[str, tuple[Any, ...]],
                actual: dict[str, tuple[Any, ...]]) -> list[str]:
    """Human-readable differences between two digests; empty means bit-exact."""
    out = [f"missing in restore: {p} ({expected[p][0]})" for p in sorted(expected.keys()
                                                                          - actual.keys())]
    out += [f"extra in restore: {p} ({actual[p][0]})" for p in sorted(actual.keys()
                                                                       - expected.keys())]
    out += [f"differs: {p}: expected {expected[p]}, got {actual[p]}"
            for p in sorted(expected.keys() & actual.keys()) if expected[p] != actual[p]]
    return out


# --------------------------------------------------------------------------- tools


class Tool:
    """One backup program: how to init, back up and restore into a per-run directory."""

    name = ""
    binary = ""

    def __init__(self, run_dir: Path, exe: str) -> None:
        self.run_dir = run_dir
        self.exe = exe
        self.repo = run_dir / "repo"
        self.home = run_dir / "home"
        self.count = 0

    @classmethod
    def find(cls, override: str | None = None) -> str | None:
        return shutil.which(override or cls.binary)

    @classmethod
    def version(cls, exe: str) -> str:
        return subprocess.run([exe, "--version"], capture_output=True, text=True,
                              check=False).stdout.strip().splitlines()[0]

    @classmethod
    def prepare(cls, exe: str) -> None:
        """Whatever an installed copy of the tool has that a fresh checkout may lack."""

    def env(self) -> dict[str, str]:
        """A clean environment: caches and config in the run directory, never in $HOME."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("ENIGMA_", "RESTIC_", "BORG_"))}
        env.update(HOME=str(self.home), XDG_CACHE_HOME=str(self.home / ".cache"),
                   XDG_CONFIG_HOME=str(self.home / ".config"), LC_ALL="C.UTF-8")
        return env

    def cache_dirs(self) -> list[Path]:
        return [self.home]

    def init(self) -> list[str]:
        raise NotImplementedError

    def backup(self, source: Path) -> list[str]:
        raise NotImplementedError

    def backup_done(self, measured: Measured) -> None:
        """Remember what the next restore needs (e.g. the backup id)."""

    def restore(self, dest: Path) -> tuple[list[str], Path | None]:
        """The restore command and its working directory."""
        raise NotImplementedError


class Enigma(Tool):
    name = "enigma"
    binary = "enigma"

    @classmethod
    def prepare(cls, exe: str) -> None:
        """Compile Enigma's and its plugins' modules to bytecode, as ``pip install`` does
        (borg from Debian comes compiled too). From an editable install with
        ``PYTHONDONTWRITEBYTECODE`` set, as on the machine of docs/performance.md, every
        command compiled its modules anew: 0.09 s per command, measured."""
        with open(exe, "rb") as script:
            first = script.readline().decode(errors="replace")
        python = first[2:].strip() if first.startswith("#!") else sys.executable
        where = ("import enigma, importlib.metadata as m, importlib.util as u, os\n"
                 "print(os.path.dirname(enigma.__file__))\n"
                 "for ep in m.entry_points(group='enigma'):\n"
                 "    print(os.path.dirname(u.find_spec(ep.module.split('.')[0]).origin))\n")
        dirs = subprocess.run([python, "-c", where], capture_output=True, text=True,
                              check=True).stdout.split()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        subprocess.run([python, "-m", "compileall", "-q", *sorted(set(dirs))], env=env,
                       check=True, stdout=subprocess.DEVNULL)
    config = ('[enigma]\nkey_provider = "local"\ndistribution = "RoundRobin"\n\n'
              '[enigma.compression]\nenabled = true\nlevel = 3\n')
    settings = "AES-256-GCM, HMAC-SHA256 ids, FastCDC 512 KiB/1 MiB/8 MiB, zstd 3 (per chunk)"

    @classmethod
    def find(cls, override: str | None = None) -> str | None:
        if override:
            return shutil.which(override)
        beside = Path(sys.executable).parent / "enigma"  # the venv running this script
        return str(beside) if beside.exists() else shutil.which("enigma")

    def env(self) -> dict[str, str]:
        return {**super().env(), "ENIGMA_PASSPHRASE": PASSPHRASE}

    def init(self) -> list[str]:
        self.repo.mkdir(mode=0o700, parents=True)
        (self.repo / "enigma.toml").write_text(self.config)
        return [self.exe, "--config-dir", str(self.repo), "init"]

    def backup(self, source: Path) -> list[str]:
        return [self.exe, "--config-dir", str(self.repo), "backup", str(source)]

    def backup_done(self, measured: Measured) -> None:
        self.last_id = measured.stdout.strip().splitlines()[-1]

    def restore(self, dest: Path) -> tuple[list[str], Path | None]:
        return [self.exe, "--config-dir", str(self.repo), "restore", self.last_id,
                str(dest)], None


class Restic(Tool):
    name = "restic"
    binary = "restic"
    settings = "repository v2, AES-256-CTR + Poly1305-AES, compression auto (zstd)"

    @classmethod
    def version(cls, exe: str) -> str:
        return subprocess.run([exe, "version"], capture_output=True, text=True,
                              check=False).stdout.strip()

    def env(self) -> dict[str, str]:
        return {**super().env(), "RESTIC_REPOSITORY": str(self.repo),
                "RESTIC_PASSWORD": PASSPHRASE, "RESTIC_CACHE_DIR": str(self.home / "cache")}

    def init(self) -> list[str]:
        return [self.exe, "init", "--repository-version", "2"]

    def backup(self, source: Path) -> list[str]:
        return [self.exe, "backup", str(source)]

    def restore(self, dest: Path) -> tuple[list[str], Path | None]:
        return [self.exe, "restore", "latest", "--target", str(dest)], None


class Borg(Tool):
    name = "borg"
    binary = "borg"
    settings = "repokey-blake2 (AES-256-CTR + BLAKE2b MAC), zstd,3"

    def env(self) -> dict[str, str]:
        return {**super().env(), "BORG_PASSPHRASE": PASSPHRASE,
                "BORG_BASE_DIR": str(self.home)}

    def init(self) -> list[str]:
        return [self.exe, "init", "--encryption=repokey-blake2", str(self.repo)]

    def backup(self, source: Path) -> list[str]:
        self.count += 1
        return [self.exe, "create", "--compression", "zstd,3",
                f"{self.repo}::bench-{self.count}", str(source)]

    def restore(self, dest: Path) -> tuple[list[str], Path | None]:
        dest.mkdir(parents=True, exist_ok=True)
        return [self.exe, "extract", f"{self.repo}::bench-{self.count}"], dest


TOOLS: dict[str, type[Tool]] = {"enigma": Enigma, "restic": Restic, "borg": Borg}


# --------------------------------------------------------------------------- one run


@dataclass
class StepResult:
    """One step of one run; ``mbps`` is dataset bytes over wall time, ``cpu`` the
    command's user + system seconds (all its threads)."""

    wall: float
    cpu: float
    mbps: float
    rss_mib: float
    repo_mib: float
    repo_apparent_mib: float
    repo_objects: int
    cache_mib: float


@dataclass
class RunResult:
    tool: str
    repeat: int
    steps: dict[str, StepResult] = field(default_factory=dict)
    error: str | None = None


class Failure(Exception):
    """A step failed: the rest of that tool's run is skipped, and the script exits 1."""


class Bench:
    """The shared state of one invocation: work directory, dataset, options."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.pristine = work / "pristine"
        self.source = work / "src" / "tree"  # the same absolute path for every tool
        self.expected: dict[str, tuple[Any, ...]] | None = None
        self.mutation: dict[str, Any] = {}
        #: Trees to delete once every timed step is over (see ``set_aside``).
        self.trash = work / "trash"
        self.trash_serial = 0

    def set_aside(self, path: Path) -> None:
        """Move ``path`` out of the way now, delete it only at the end (``empty_trash``).

        Deleting a tree costs the *next* steps: ext4 without a journal (this machine's
        root) skips inodes freed in the last 60-300 s when it allocates new ones, by
        reading each one's on-disk dtime, so after ``rm -rf`` of 25,000 files every file
        created nearby costs a scan (measured: ``cp -a`` of the 1 GB tree 1.6 s, then
        7.1 s and 15.4 s when each run followed the deletion of the previous copy, nearly
        all in the kernel, most of it in ``recently_deleted``). A rename frees no inode.
        """
        if path.exists():
            self.trash.mkdir(exist_ok=True)
            self.trash_serial += 1
            path.rename(self.trash / f"{self.trash_serial}-{path.name}")

    def empty_trash(self) -> None:
        shutil.rmtree(self.trash, ignore_errors=True)

    def prepare_dataset(self) -> dict[str, Any]:
        """Generate the pristine tree once (reused when ``--workdir`` already has it)."""
        stamp = self.work / "pristine.json"
        want = {"scale": self.args.scale, "seed": self.args.seed}
        if stamp.exists() and self.pristine.exists():
            info = json.loads(stamp.read_text())
            if {k: info.get(k) for k in want} == want:
                print(f"# reusing dataset {self.pristine}", file=sys.stderr)
                return info
            shutil.rmtree(self.pristine)
        print(f"# generating dataset (scale {self.args.scale}) in {self.pristine}",
              file=sys.stderr)
        info = asdict(generate(self.pristine, self.args.scale, self.args.seed))
        stamp.write_text(json.dumps(info))
        return info

    def fresh_source(self) -> dict[str, tuple[Any, ...]]:
        """Copy the pristine tree to the source path, flush it, and read it once (warm)."""
        self.set_aside(self.source)
        self.source.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(self.pristine, self.source, symlinks=True)
        os.sync()  # no writeback of the copy during a timed step
        return tree_digest(self.source)

    def step(self, tool: Tool, result: RunResult, name: str, argv: list[str],
             data_bytes: int, cwd: Path | None = None) -> Measured:
        os.sync()  # the previous step's writes are not this step's cost
        measured = run_measured(argv, tool.env(), tool.run_dir / "logs", name, cwd=cwd,
                                timeout=self.args.timeout)
        if measured.code != 0:
            tail = "\n".join((measured.stderr or measured.stdout).strip().splitlines()[-15:])
            raise Failure(f"{tool.name} {name} exited {measured.code}: "
                          f"{shlex.join(argv)}\n{tail}")
        allocated, apparent = disk_usage(tool.repo)
        result.steps[name] = StepResult(
            wall=measured.wall, cpu=measured.cpu,
            mbps=data_bytes / MB / measured.wall if data_bytes else 0.0,
            rss_mib=measured.rss_kib / 1024,
            repo_mib=allocated / MiB, repo_apparent_mib=apparent / MiB,
            repo_objects=sum(len(f) for _, _, f in os.walk(tool.repo)),
            cache_mib=disk_usage(*tool.cache_dirs())[0] / MiB)
        s = result.steps[name]
        print(f"  {tool.name:<7} {name:<9} {s.wall:8.2f} s {s.cpu:6.2f} CPU s {s.mbps:8.1f} MB/s "
              f"{s.rss_mib:7.1f} MiB RSS  repo {s.repo_mib:8.1f} MiB", file=sys.stderr)
        return measured

    def run_tool(self, cls: type[Tool], exe: str, repeat: int) -> RunResult:
        result = RunResult(cls.name, repeat)
        run_dir = self.work / f"run-{repeat}-{cls.name}"
        self.set_aside(run_dir)  # an earlier invocation's
        run_dir.mkdir(parents=True)
        tool = cls(run_dir, exe)
        tool.home.mkdir()
        try:
            before = self.fresh_source()
            _files, size = tree_size(before)
            self.step(tool, result, "init", tool.init(), 0)
            tool.backup_done(self.step(tool, result, "backup", tool.backup(self.source), size))
            tool.backup_done(self.step(tool, result, "rebackup", tool.backup(self.source),
                                       size))
            self.mutation = asdict(mutate(self.source, self.args.fraction, self.args.seed + 1))
            os.sync()
            after = tree_digest(self.source)
            if self.expected is None:
                self.expected = after
            elif differences(self.expected, after):
                raise Failure("the mutated dataset differs between tools: mutate() is not "
                              "deterministic")
            _files, size = tree_size(after)
            tool.backup_done(self.step(tool, result, "mutated", tool.backup(self.source),
                                       size))
            dest = run_dir / "restore"
            argv, cwd = tool.restore(dest)
            self.step(tool, result, "restore", argv, size, cwd=cwd)
            restored = dest / self.source.relative_to(self.source.anchor)
            if not restored.is_dir():
                raise Failure(f"{tool.name} restore: {restored} does not exist")
            diff = differences(after, tree_digest(restored))
            if diff:
                shown = "\n  ".join(diff[:20])
                raise Failure(f"{tool.name} restore is NOT bit-exact: {len(diff)} "
                              f"differences, first ones:\n  {shown}")
            print(f"  {tool.name:<7} restore is bit-exact ({len(after)} entries)",
                  file=sys.stderr)
        except Failure as exc:
            result.error = str(exc)
            print(f"FAILED: {exc}", file=sys.stderr)
        finally:
            if not self.args.keep:
                self.set_aside(run_dir)
        return result


# --------------------------------------------------------------------------- reporting


def proc_field(path: str, key: str) -> str:
    """The first ``key: value`` of a /proc file, or '' where there is none."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def busy_cpu_seconds() -> float:
    """CPU seconds every process on the machine has used since boot (/proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this script and the tools it ran (all waited for)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def enigma_revision() -> str:
    """The commit benchmarked, and whether Enigma's code differed from it (others may be
    editing the tree while a benchmark runs)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                                "enigma", "pyproject.toml"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes in enigma/" if dirty else "")


def machine_info(exes: dict[str, str]) -> dict[str, Any]:
    """What the numbers depend on: cores, CPU, memory, kernel, versions, load."""
    cpu, mem = proc_field("/proc/cpuinfo", "model name"), proc_field("/proc/meminfo", "MemTotal")
    versions = {}
    for name, exe in exes.items():
        try:
            versions[name] = TOOLS[name].version(exe)
        except (OSError, IndexError):
            versions[name] = "?"
    return {"nproc": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "cpu": cpu, "memory": mem, "kernel": platform.release(),
            "python": platform.python_version(), "versions": versions,
            "enigma_revision": enigma_revision(),
            "loadavg_start": os.getloadavg()}


def medians(runs: list[RunResult]) -> dict[str, dict[str, dict[str, float]]]:
    """Per tool and step, the median of each metric over the successful repeats."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for tool in dict.fromkeys(r.tool for r in runs):
        for step in STEPS:
            values = [r.steps[step] for r in runs if r.tool == tool and step in r.steps]
            if values:
                out.setdefault(tool, {})[step] = {
                    k: statistics.median(getattr(v, k) for v in values)
                    for k in ("wall", "cpu", "mbps", "rss_mib", "repo_mib", "repo_apparent_mib",
                              "repo_objects", "cache_mib")}
                out[tool][step]["n"] = len(values)
    return out


def ratio(med: dict[str, dict[str, dict[str, float]]], step: str, other: str,
          ) -> float | None:
    """Enigma against ``other``: MB/s ratio for throughput steps, wall ratio otherwise."""
    a, b = med.get("enigma", {}).get(step), med.get(other, {}).get(step)
    if not a or not b:
        return None
    if step in THROUGHPUT_STEPS:
        return a["mbps"] / b["mbps"] if b["mbps"] else None
    return a["wall"] / b["wall"] if b["wall"] else None


def cpu_spread(mine: dict[str, float], theirs: dict[str, float], step: str, goal: float,
               cores: int) -> dict[str, Any]:
    """Enigma's CPU seconds spread perfectly over ``cores`` beside the wall time the target
    allows: when the first is larger, no parallelism meets the target, only less work."""
    allowed = theirs["wall"] / goal if step in THROUGHPUT_STEPS else theirs["wall"] * goal
    spread = mine["cpu"] / cores
    return {"cpu_spread_s": spread, "allowed_wall_s": allowed, "cpu_bound": spread > allowed}


def targets(med: dict[str, dict[str, dict[str, float]]], cores: int) -> list[dict[str, Any]]:
    """The issue's targets: Enigma's ratios to restic and its peak RSS; for the time and
    throughput targets also whether Enigma's CPU time alone rules them out (``cpu_spread``)."""
    rows: list[dict[str, Any]] = []
    for step, goal, better in (("backup", 3.0, "ge"), ("rebackup", 0.5, "le"),
                               ("mutated", 0.5, "le"), ("restore", 3.0, "ge")):
        r = ratio(med, step, "restic")
        what = "MB/s" if step in THROUGHPUT_STEPS else "wall time"
        row = {"target": f"{TITLES[step].split(' (')[0]}: "
                         f"{'>=' if better == 'ge' else '<='} {goal}x restic's {what}",
               "measured": None if r is None else f"{r:.2f}x",
               "met": None if r is None else (r >= goal if better == "ge" else r <= goal)}
        if r is not None:
            row.update(cpu_spread(med["enigma"][step], med["restic"][step], step, goal, cores))
        rows.append(row)
    e, r_ = med.get("enigma", {}).get("restore"), med.get("restic", {}).get("restore")
    rows.append({"target": "repository size after all steps <= restic's",
                 "measured": (f"{e['repo_mib']:.1f} vs {r_['repo_mib']:.1f} MiB"
                              if e and r_ else None),
                 "met": e["repo_mib"] <= r_["repo_mib"] if e and r_ else None})
    peak = max((s["rss_mib"] for s in med.get("enigma", {}).values()), default=None)
    rows.append({"target": f"peak RSS, any step <= {RSS_TARGET_MIB} MiB",
                 "measured": None if peak is None else f"{peak:.1f} MiB",
                 "met": None if peak is None else peak <= RSS_TARGET_MIB})
    return rows


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: machine, dataset, one table per step, targets."""
    m, d, med = report["machine"], report["dataset"], report["medians"]
    lines = [
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        f"Machine: {m['nproc']} CPUs ({m['usable_cpus']} usable), {m['cpu']}, {m['memory']} "
        f"RAM, Linux {m['kernel']}, Python {m['python']}  ",
        "Versions: " + "; ".join(f"{k}: {v}" for k, v in m["versions"].items())
        + f"; Enigma commit {m['enigma_revision']}  ",
        f"Load: 1-min load average {m['loadavg_start'][0]:.2f} before the run; other "
        f"processes used {m['other_cores']:.2f} of {m['usable_cpus']} cores on average "
        "during it"
        + (" - NOT IDLE, numbers are indicative only" if report["busy"] else " (idle)")
        + "  ",
        f"Dataset: scale {d['scale']}, seed {d['seed']}: {d['files']} files, {d['dirs']} dirs, "
        f"{d['symlinks']} symlinks, {d['bytes'] / MB:.1f} MB "
        f"({d['duplicate_bytes'] / MB:.1f} MB duplicate content); mutation changed "
        f"{report['mutation'].get('changed_bytes', 0) / MB:.1f} MB "
        f"({report['mutation'].get('new_files', 0)} new, "
        f"{report['mutation'].get('deleted', 0)} deleted files, "
        f"{report['mutation'].get('inserted', 0)} inserts in large files)  ",
        f"Medians of {report['repeat']} repeat(s); page cache warm (each tool's source tree "
        "is synced and read once, untimed, before its timed steps; the cache is not "
        "dropped). MB/s = dataset bytes (10^6) / wall time. Repo = disk usage of the "
        "repository (Enigma: its config dir with manifest, keystore and storage/); "
        "restic's and borg's local caches are not counted (cache column).",
        "",
        "Settings: " + "; ".join(f"{TOOLS[t].name}: {TOOLS[t].settings}" for t in med) + ".",
    ]
    for step in STEPS:
        rows = [(tool, steps[step]) for tool, steps in med.items() if step in steps]
        if not rows:
            continue
        lines += ["", f"### {TITLES[step]}", "",
                  "| tool | wall s | CPU s | MB/s | peak RSS MiB | repo MiB (du) | repo files | "
                  "cache MiB |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for tool, s in rows:
            mbps = f"{s['mbps']:.1f}" if s["mbps"] else "-"
            lines.append(f"| {tool} | {s['wall']:.2f} | {s['cpu']:.2f} | {mbps} | "
                         f"{s['rss_mib']:.1f} | "
                         f"{s['repo_mib']:.1f} | {s['repo_objects']:.0f} | "
                         f"{s['cache_mib']:.1f} |")
        mine = med.get("enigma", {}).get(step)
        for other in ("restic", "borg"):
            theirs = med.get(other, {}).get(step)
            if mine and theirs and step != "init":
                cells = []
                for key in ("wall", "cpu", "mbps", "rss_mib", "repo_mib", "repo_objects"):
                    cell = f"{mine[key] / theirs[key]:.2f}x" if theirs[key] else "-"
                    merit = "mbps" if step in THROUGHPUT_STEPS else "wall"
                    cells.append(f"**{cell}**" if key == merit else cell)
                lines.append(f"| enigma / {other} | {' | '.join(cells)} | |")
    cores = m["usable_cpus"]
    lines += ["", "### targets (Enigma vs restic)", "",
              f"CPU / {cores} cores: Enigma's CPU seconds for the step spread perfectly over "
              "the usable cores, beside the wall time the target allows; when it is larger, "
              "the target needs less work, not more parallelism.", "",
              f"| target | measured | met | CPU / {cores} cores vs allowed wall |",
              "|---|---|---|---|"]
    for row in report["targets"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[row["met"]]
        bound = ""
        if "cpu_spread_s" in row:
            bound = f"{row['cpu_spread_s']:.2f} s vs {row['allowed_wall_s']:.2f} s"
            if row["cpu_bound"]:
                bound += " (CPU-bound)"
        lines.append(f"| {row['target']} | {row['measured'] or 'n/a'} | {met} | {bound} |")
    if report["failures"]:
        lines += ["", "### failures", ""] + [f"- {f}" for f in report["failures"]]
    if report["skipped"]:
        lines += ["", "Skipped (not installed): " + ", ".join(report["skipped"])]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1 = about 1 GB")
    parser.add_argument("--repeat", type=int, default=3, help="fresh repository each time")
    parser.add_argument("--tools", default="enigma,restic,borg")
    parser.add_argument("--workdir", type=Path,
                        help="where dataset, repositories and restores go [a temp dir]")
    parser.add_argument("--json", type=Path, help="also write the full results here")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--fraction", type=float, default=0.05, help="share of bytes mutated")
    parser.add_argument("--timeout", type=float, default=3600, help="per command, seconds")
    parser.add_argument("--keep", action="store_true", help="keep repositories and restores")
    for name in TOOLS:
        parser.add_argument(f"--{name}", metavar="PATH", help=f"the {name} executable")
    parser.add_argument("--enigma-config", metavar="TOML", type=Path,
                        help="Enigma's enigma.toml for the run (compare settings, e.g. chunk "
                             "sizes) [compression on, otherwise defaults]")
    args = parser.parse_args(argv)
    if args.enigma_config:
        Enigma.config = args.enigma_config.read_text()
        Enigma.settings = f"enigma.toml from {args.enigma_config}"

    wanted = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in TOOLS]
    if unknown:
        parser.error(f"unknown tools: {', '.join(unknown)} (known: {', '.join(TOOLS)})")
    exes: dict[str, str] = {}
    skipped: list[str] = []
    for name in wanted:
        exe = TOOLS[name].find(getattr(args, name))
        if exe:
            exes[name] = exe
        else:
            skipped.append(name)
            print(f"# skipping {name}: not installed (apt-get install "
                  f"{'borgbackup' if name == 'borg' else name})", file=sys.stderr)
    if not exes:
        print("nothing to run", file=sys.stderr)
        return 1
    for name, exe in exes.items():
        TOOLS[name].prepare(exe)

    owns_work = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="enigma-bench-")) if owns_work else args.workdir
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    machine = machine_info(exes)
    started, busy_before, own_before = time.monotonic(), busy_cpu_seconds(), own_cpu_seconds()
    bench = Bench(args, work)
    runs: list[RunResult] = []
    try:
        dataset = bench.prepare_dataset()
        names = list(exes)
        # Every run's source copy, repository and restore stay until the end (set_aside).
        need = 3.5 * dataset["bytes"] * args.repeat * len(names)
        if shutil.disk_usage(work).free < need:
            print(f"not enough space in {work}: this run keeps about {need / 1e9:.1f} GB "
                  "until it ends (fewer --repeat or --tools, or another --workdir)",
                  file=sys.stderr)
            return 1
        for repeat in range(args.repeat):
            order = names[repeat % len(names):] + names[:repeat % len(names)]
            print(f"# repeat {repeat + 1}/{args.repeat}: {', '.join(order)}", file=sys.stderr)
            for name in order:
                runs.append(bench.run_tool(TOOLS[name], exes[name], repeat))
    finally:
        bench.empty_trash()
        if owns_work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    others = (busy_cpu_seconds() - busy_before) - (own_cpu_seconds() - own_before)
    machine["other_cores"] = max(0.0, others / (time.monotonic() - started))
    med = medians(runs)
    ncpu = machine["usable_cpus"]
    report = {
        "command": shlex.join(["python", "bench/compare.py", *(argv or sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine, "dataset": dataset, "mutation": bench.mutation,
        "repeat": args.repeat, "skipped": skipped,
        "busy": machine["other_cores"] > 0.1 * ncpu or machine["loadavg_start"][0] > 0.5 * ncpu,
        "runs": [asdict(r) for r in runs], "medians": med,
        "ratios_to_restic": {s: ratio(med, s, "restic") for s in STEPS[1:]},
        "targets": targets(med, ncpu),
        "failures": [f"{r.tool} (repeat {r.repeat + 1}): {r.error.splitlines()[0]}"
                     for r in runs if r.error],
    }
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
