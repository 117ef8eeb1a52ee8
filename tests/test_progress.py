"""Progress of long commands: the counts the core reports, the totals scanner, the JSON-lines
and terminal displays, and the real CLI with and without a terminal.

Slow runs use the ``Faulty`` storage plugin's ``delay`` (every chunk call sleeps up to that
long), so a small tree takes a few seconds without moving much data.
"""

from __future__ import annotations

import fcntl
import io
import itertools
import json
import os
import random
import select
import struct
import subprocess
import termios
import threading
import time
from pathlib import Path

import pytest
from helpers import ENIGMA, PASSPHRASE, Enigma, make_tree

from enigma.backup import run_backup, scan_sizes
from enigma.check import EVERYTHING, run_check
from enigma.chunkstore import chunk_key
from enigma.config import parse_config
from enigma.gc import forget_backups, run_gc
from enigma.plugin_manager import PluginManager
from enigma.progress import NO_PROGRESS, Progress, ProgressSnapshot, TotalsScanner
from enigma.progress_display import (
    JsonLinesProgress,
    print_summary,
    shorten,
    stats_text,
    status_line,
)
from enigma.repair import run_repair
from enigma.repository import Repository
from enigma.restore import run_restore
from enigma.verify import run_verify

SMALL_CDC = "[enigma.chunk_strategy.Cdc]\nmin_size = 16384\navg_size = 65536\nmax_size = 262144\n"


# -- snapshot math -----------------------------------------------------------------------


def snap(**overrides: object) -> ProgressSnapshot:
    values: dict = dict(operation="backup", files_done=5, bytes_done=50, files_total=10,
                        bytes_total=200, current=None, elapsed=10.0, errors=0)
    values.update(overrides)
    return ProgressSnapshot(**values)


def test_rate_fraction_and_eta_follow_bytes_when_a_byte_total_is_known() -> None:
    s = snap()
    assert s.bytes_per_second == 5.0
    assert s.fraction_done == 0.25
    assert s.eta_seconds == pytest.approx(30.0)  # 150 bytes left at 5 B/s


def test_without_a_byte_total_files_measure_the_progress() -> None:
    s = snap(bytes_total=None, files_done=4, files_total=10, elapsed=8.0)
    assert s.fraction_done == 0.4
    assert s.eta_seconds == pytest.approx(12.0)  # 6 files left at 0.5 files/s
    # A byte total of 0 (only empty files) says nothing about the rate either.
    assert snap(bytes_total=0, files_done=1, files_total=4).fraction_done == 0.25


def test_unknown_totals_no_time_and_overshoot() -> None:
    unknown = snap(files_total=None, bytes_total=None)
    assert unknown.fraction_done is None and unknown.eta_seconds is None
    assert snap(elapsed=0.0).bytes_per_second == 0.0 and snap(elapsed=0.0).eta_seconds is None
    assert snap(bytes_done=0, files_done=0).eta_seconds is None  # no rate yet
    grew = snap(bytes_done=300)  # a file grew while it was read
    assert grew.fraction_done == 1.0 and grew.eta_seconds == 0.0
    assert snap(files_total=0, bytes_total=0, files_done=0).fraction_done == 1.0


def test_totals_set_by_a_scan_are_not_final_until_it_says_so() -> None:
    progress = Progress()
    progress.begin("backup")
    progress.set_totals(files=3, bytes=30, final=False)
    assert not progress.snapshot().totals_final
    line = status_line(progress.snapshot())
    assert line["total_files"] is None and line["percent_done"] is None
    assert line["seconds_remaining"] is None
    progress.advance(files=1, bytes=10)
    progress.set_totals(files=3, bytes=40)
    line = status_line(progress.snapshot())
    assert (line["total_files"], line["total_bytes"], line["files_done"],
            line["bytes_done"]) == (3, 40, 1, 10)
    assert line["percent_done"] == 0.25


def test_terminal_figures_and_path_shortening() -> None:
    text = stats_text(snap(files_done=1234, files_total=5000, bytes_done=1_200_000_000,
                           bytes_total=3_400_000_000, elapsed=20.0))
    assert "35%" in text and "1,234/5,000 files" in text and "1.2 GB/3.4 GB" in text
    assert "60.0 MB/s" in text and "ETA 0:00:37" in text
    counting = stats_text(snap(totals_final=False, operation="verify"))
    assert "5/10+ chunks" in counting and "ETA" not in counting and "%" not in counting
    assert shorten("home/me/a/very/long/name.txt", 12) == "…ng/name.txt"
    assert shorten("short.txt", 12) == "short.txt"


# -- the scanner -------------------------------------------------------------------------


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_scanner_publishes_final_totals_when_its_count_is_done() -> None:
    progress = Progress()
    progress.begin("backup")
    scanner = TotalsScanner(progress, lambda: iter([1, 2, 3, 0])).start()
    wait_for(lambda: not scanner.running)
    s = progress.snapshot()
    assert (s.files_total, s.bytes_total, s.totals_final) == (4, 6, True)
    assert scanner.finished
    items = TotalsScanner(progress, lambda: iter([0, 0]), count_bytes=False).start()
    wait_for(lambda: not items.running)
    assert progress.snapshot().files_total == 2 and progress.snapshot().bytes_total == 6


def test_scanner_stops_when_asked_and_leaves_totals_unfinished() -> None:
    def endless():
        while True:
            yield 1

    progress = Progress()
    progress.begin("backup")
    scanner = TotalsScanner(progress, endless).start()
    wait_for(lambda: progress.snapshot().files_total is not None)  # running totals
    assert not progress.snapshot().totals_final
    started = time.monotonic()
    scanner.stop()
    assert time.monotonic() - started < 1.0
    assert not scanner.running and not scanner.finished
    assert not progress.snapshot().totals_final


def test_no_scan_without_a_display() -> None:
    scanner = TotalsScanner(NO_PROGRESS, lambda: iter([1])).start()
    assert not scanner.running and not scanner.finished
    scanner.stop()


# -- what the core reports -----------------------------------------------------------------


class Recorder(Progress):
    """A progress that keeps every error and counts begin/end calls."""

    def __init__(self) -> None:
        super().__init__()
        self.begun: list[str] = []
        self.ended = 0
        self.seen: list[tuple[str | None, str]] = []

    def begin(self, operation: str, **totals: int | None) -> None:
        super().begin(operation, **totals)
        self.begun.append(operation)

    def error(self, path: str | None = None, message: str = "") -> None:
        super().error(path, message)
        self.seen.append((path, message))

    def end(self, summary: dict | None = None) -> None:
        self.ended += 1


def make_repo(tmp_path: Path, *, pack_size: int | None = None) -> Repository:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    packs = "" if pack_size is None else f"pack_size = {pack_size}\n"
    config = parse_config(f"[enigma]\n{packs}{SMALL_CDC}", config_dir,
                          config_dir / "enigma.toml")
    repo = Repository(config, PluginManager(), lambda confirm: PASSPHRASE)
    repo.create_keys()
    for provider in repo.providers.values():
        provider.create_bucket()
    return repo


def test_each_command_reports_what_it_did(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    make_tree(tmp_path / "src", big_file_size=600_000)
    # The repository's own directory inside a source is never backed up, nor counted.
    progress = Recorder()
    result = run_backup(repo, [tmp_path], progress=progress)
    s, stats = progress.snapshot(), result.stats
    assert progress.begun == ["backup"] and progress.ended == 1
    assert (s.files_done, s.bytes_done) == (stats.files, stats.bytes_total)
    assert stats.files == 10 and stats.bytes_read == stats.bytes_total
    assert sum(1 for _ in scan_sizes([tmp_path], {str(repo.config.config_dir)})) == stats.files
    assert sum(scan_sizes([tmp_path], {str(repo.config.config_dir)})) == stats.bytes_total
    assert not [t for t in threading.enumerate() if t.name == "enigma-scan"]

    again = Recorder()  # unchanged files count as done, with their size
    second = run_backup(repo, [tmp_path], progress=again)
    assert second.stats.files_unchanged == second.stats.files
    assert again.snapshot().bytes_done == second.stats.bytes_total

    restored = Recorder()
    outcome = run_restore(repo, result.backup_id, tmp_path / "out", progress=restored)
    s = restored.snapshot()
    assert (s.files_done, s.bytes_done) == (outcome.files, outcome.bytes)
    assert (s.files_total, s.bytes_total) == (stats.files, stats.bytes_total)
    assert restored.ended == 1

    part = Recorder()  # a selection: its totals are counted beside the restore
    picked = run_restore(repo, result.backup_id, tmp_path / "part", glob="*.bin",
                         progress=part)
    assert picked.files == 3 and part.snapshot().files_done == 3
    assert part.snapshot().bytes_done == picked.bytes

    verified = Recorder()
    checked = run_verify(repo, result.backup_id, progress=verified)
    assert (verified.snapshot().files_done, verified.snapshot().bytes_done) == (
        checked.chunks, checked.bytes)

    inspected = Recorder()
    report = run_check(repo, EVERYTHING, progress=inspected)
    s = inspected.snapshot()
    assert (s.files_done, s.files_total) == (report.chunks, report.chunks)
    assert s.bytes_done == report.bytes_read == s.bytes_total

    repaired = Recorder()
    fixed = run_repair(repo, progress=repaired)
    assert repaired.snapshot().files_done == fixed.chunks == fixed.healthy

    forget_backups(repo, [result.backup_id, second.backup_id])
    storage = repo.config.config_dir / "storage"
    stored = [p for prefix in ("chunks", "packs") for p in (storage / prefix).rglob("*")
              if p.is_file()]
    collected = Recorder()
    gone = run_gc(repo, progress=collected)
    s = collected.snapshot()
    # gc's progress counts objects deleted: single chunk objects and whole packs.
    assert gone.chunks > 0 and gone.packs > 0
    assert s.files_done == s.files_total == len(stored)
    assert not [p for p in stored if p.exists()]
    assert s.bytes_done == gone.bytes and collected.ended == 1


def test_a_damaged_file_is_an_error_not_progress(tmp_path: Path) -> None:
    # pack_size = 0: bad.txt's chunk is an object of its own, damaged alone (a damaged
    # pack is covered in tests/test_packs.py).
    repo = make_repo(tmp_path, pack_size=0)
    source = tmp_path / "src"
    source.mkdir()
    (source / "good.txt").write_text("good")
    (source / "bad.txt").write_text("soon damaged")
    backup = run_backup(repo, [source])
    (entry,) = [e for e in repo.manifest.iter_files(backup.backup_id) if e.path.endswith("bad.txt")]
    storage = repo.providers["local"]
    key = chunk_key(entry.chunks[0].chunk_id)
    sealed = bytearray(storage.get(key))
    sealed[-1] ^= 1
    storage.put(key, bytes(sealed))
    progress = Recorder()
    result = run_restore(repo, backup.backup_id, tmp_path / "out", progress=progress)
    assert len(result.damaged) == 1 and progress.snapshot().files_done == result.files == 1
    ((path, message),) = progress.seen
    assert path == entry.path and "authentication failed" in message
    assert not message.startswith(entry.path)  # the path is the item, not the message
    assert progress.snapshot().errors == 1


def test_unreadable_files_are_reported_as_errors(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads a chmod 000 file; the CLI test below drops the capability")
    repo = make_repo(tmp_path)
    source = tmp_path / "src"
    source.mkdir()
    (source / "locked.txt").write_text("no")
    (source / "locked.txt").chmod(0)
    progress = Recorder()
    run_backup(repo, [source], progress=progress)
    assert [p for p, _m in progress.seen] == [f"{str(source).lstrip('/')}/locked.txt"]


# -- the JSON-lines display ------------------------------------------------------------------


def test_json_lines_status_then_errors_and_nothing_after_the_end() -> None:
    out, err = io.StringIO(), io.StringIO()
    progress = JsonLinesProgress("restore", stream=out, error_stream=err, interval=0.05)
    progress.begin("restore", files_total=4, bytes_total=400)
    progress.advance(files=1, bytes=100)
    progress.current_file("a/b.txt")
    wait_for(lambda: out.getvalue().count("\n") >= 2)
    progress.error("a/c.txt", "damaged")
    progress.end()
    size = len(out.getvalue())
    time.sleep(0.2)
    assert len(out.getvalue()) == size  # the status thread has stopped
    print_summary({"files": 1, "ok": False}, stream=out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    status = [x for x in lines if x["message_type"] == "status"]
    assert status and status[0]["total_bytes"] == 400 and status[0]["bytes_done"] == 100
    assert status[0]["current_files"] == ["a/b.txt"] and status[0]["percent_done"] == 0.25
    assert {x["message_type"] for x in lines} == {"status", "summary"}
    errors = [json.loads(line) for line in err.getvalue().splitlines()]
    assert errors == [{"message_type": "error", "operation": "restore",
                       "error": {"message": "damaged"}, "during": "restore",
                       "item": "a/c.txt"}]
    assert lines[-1] == {"message_type": "summary", "files": 1, "ok": False}
    assert next(iter(lines[-1])) == "message_type"


def test_json_lines_from_many_threads_never_interleave(tmp_path: Path) -> None:
    with open(tmp_path / "out.jsonl", "w", encoding="utf-8") as out:
        progress = JsonLinesProgress("backup", stream=out, error_stream=out, interval=0.001)
        progress.begin("backup")

        def report(n: int) -> None:
            for i in range(300):
                progress.error(f"thread{n}/file{i}", "x" * 500)

        workers = [threading.Thread(target=report, args=(n,)) for n in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        progress.end()
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    parsed = [json.loads(line) for line in lines]
    assert sum(x["message_type"] == "error" for x in parsed) == 1200
    assert any(x["message_type"] == "status" for x in parsed)


def test_quiet_json_lines_keep_errors_but_no_status() -> None:
    out = io.StringIO()
    progress = JsonLinesProgress("backup", stream=out, error_stream=out, interval=0.01,
                                 status=False)
    progress.begin("backup")
    time.sleep(0.1)
    progress.error("x", "unreadable")
    progress.end()
    assert [json.loads(line)["message_type"] for line in out.getvalue().splitlines()] == [
        "error"]


# -- the real CLI --------------------------------------------------------------------------


class SlowRepo:
    """A repository on one ``Faulty`` provider whose chunk calls sleep (up to ``delay``).

    ``pack_size = 0``: one slow call per chunk object (Faulty delays only ``chunks/``), so
    a backup and a restore last long enough to print status lines; packs are covered in
    tests/test_packs.py."""

    def __init__(self, tmp_path: Path) -> None:
        self.enigma = Enigma(tmp_path / "config")
        self.enigma.config_dir.mkdir()
        (self.enigma.config_dir / "enigma.toml").write_text(
            f'[enigma]\npack_size = 0\n{SMALL_CDC}\n'
            '[[providers]]\nname = "slow"\ntype = "Faulty"\n'
            f'path = "{tmp_path / "store"}"\n')
        self.enigma.ok("init")
        self.source = tmp_path / "src"
        rng = random.Random(7)
        for d in range(4):
            (self.source / f"dir{d}").mkdir(parents=True)
            for i in range(10):
                (self.source / f"dir{d}" / f"f{i}.bin").write_bytes(
                    rng.randbytes(60_000 + 1000 * i))
        (self.source / "big.bin").write_bytes(rng.randbytes(1_500_000))
        self.files = 41
        self.bytes = sum(p.stat().st_size for p in self.source.rglob("*") if p.is_file())

    def run(self, *args: str, delay: float) -> subprocess.CompletedProcess:
        return self.enigma(*args, env={"ENIGMA_FAULTY": json.dumps({"delay": delay})})


def json_lines(out: str) -> list[dict]:
    lines = out.splitlines()
    assert lines and all(line.startswith("{") for line in lines), out
    return [json.loads(line) for line in lines]


def assert_consistent(statuses: list[dict]) -> None:
    for before, after in itertools.pairwise(statuses):
        assert after["bytes_done"] >= before["bytes_done"]
        assert after["files_done"] >= before["files_done"]
        assert after["seconds_elapsed"] >= before["seconds_elapsed"]
    for line in statuses:
        if line["total_bytes"] is not None:
            assert line["bytes_done"] <= line["total_bytes"]
            assert line["files_done"] <= line["total_files"]
            assert 0 <= line["percent_done"] <= 1
            assert line["seconds_remaining"] is None or line["seconds_remaining"] >= 0
        assert line["error_count"] == 0 and len(line["current_files"]) <= 1


def test_backup_and_restore_json_print_status_lines_then_one_summary(tmp_path: Path) -> None:
    repo = SlowRepo(tmp_path)
    result = repo.run("backup", "--json", str(repo.source), delay=0.4)
    assert result.code == 0, result.err
    lines = json_lines(result.out)
    statuses, summary = lines[:-1], lines[-1]
    assert statuses, "a backup of several seconds printed no status line"
    assert {x["message_type"] for x in statuses} == {"status"}
    assert {x["operation"] for x in statuses} == {"backup"}
    assert_consistent(statuses)
    assert summary["message_type"] == "summary" and summary["status"] == "complete"
    assert set(summary) == {"message_type", "backup_id", "status", "stats", "problems"}
    stats = summary["stats"]
    assert (stats["files"], stats["bytes_total"]) == (repo.files, repo.bytes)
    assert statuses[-1]["total_files"] == repo.files  # the scan finished long before
    assert statuses[-1]["total_bytes"] == repo.bytes
    assert any(x["current_files"] for x in statuses)

    dest = tmp_path / "out"
    result = repo.run("restore", "--json", summary["backup_id"], str(dest), delay=0.2)
    assert result.code == 0, result.err
    lines = json_lines(result.out)
    statuses, summary = lines[:-1], lines[-1]
    assert statuses and {x["message_type"] for x in statuses} == {"status"}
    assert_consistent(statuses)
    assert all(x["total_files"] == repo.files for x in statuses)
    assert all(x["total_bytes"] == repo.bytes for x in statuses)
    assert summary == {"message_type": "summary", "files": repo.files, "dirs": 5,
                       "symlinks": 0, "bytes": repo.bytes, "damaged": [], "refused": [],
                       "ok": True}


def test_quick_json_runs_print_exactly_one_line(enigma: Enigma, tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src")
    result = enigma.ok("backup", "--json", str(source))
    assert len(result.out.splitlines()) == 1
    backup = json.loads(result.out)
    assert backup["message_type"] == "summary" and backup["status"] == "complete"
    result = enigma.ok("restore", "--json", backup["backup_id"], str(tmp_path / "out"))
    assert len(result.out.splitlines()) == 1 and json.loads(result.out)["ok"] is True


def test_backup_json_reports_each_unreadable_file_as_an_error_line(enigma: Enigma,
                                                                    tmp_path: Path) -> None:
    """On stderr, as restic does: stdout stays the status lines and the summary."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "fine.txt").write_text("fine")
    (source / "locked.txt").write_text("you cannot read me")
    (source / "locked.txt").chmod(0)
    result = enigma("backup", "--json", str(source), unprivileged=True)
    assert result.code == 3, result
    (summary,) = json_lines(result.out)
    (error,) = [json.loads(line) for line in result.err.splitlines() if line.startswith("{")]
    assert error["message_type"] == "error" and error["during"] == "backup"
    assert error["item"].endswith("src/locked.txt") and error["error"]["message"]
    assert summary["message_type"] == "summary" and summary["status"] == "partial"
    assert len(summary["problems"]) == 1


def test_no_progress_output_when_not_on_a_terminal(enigma: Enigma, tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src", big_file_size=2_000_000)
    runs = [enigma.ok("backup", str(source))]
    backup_id = runs[0].out.strip()
    runs += [enigma.ok("verify", backup_id), enigma.ok("check", "--read-data"),
             enigma.ok("restore", backup_id, str(tmp_path / "out")),
             enigma.ok("repair"), enigma.ok("recover", "--force"),
             enigma.ok("forget", backup_id, "--prune"), enigma.ok("gc")]
    for run in runs:
        for text in (run.out, run.err):
            assert "\x1b[" not in text and "•" not in text, text
    assert runs[0].out == backup_id + "\n"


def run_in_terminal(args: list[str], env: dict[str, str], timeout: float = 60
                    ) -> tuple[int, str]:
    """Run with stdin, stdout and stderr on a pseudo-terminal (120x40); all it printed."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env,
                            close_fds=True)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                proc.kill()
                raise AssertionError(f"timed out; got {bytes(out)[-2000:]!r}")
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every holder of the terminal's other side is gone
                break
            if not data:
                break
            out += data
    finally:
        os.close(master)
    return proc.wait(timeout=10), out.decode("utf-8", "replace")


def terminal_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ENIGMA_") and k not in ("NO_COLOR", "COLUMNS", "LINES")}
    env.update(ENIGMA_PASSPHRASE=PASSPHRASE, ENIGMA_RETRY_SECONDS="3",
               ENIGMA_TEST_FAST_KDF=os.environ.get("ENIGMA_TEST_FAST_KDF", "1"),
               TERM="xterm-256color", **extra)
    return env


def test_terminal_shows_a_bar_that_goes_away_and_quiet_hides_it(tmp_path: Path) -> None:
    repo = SlowRepo(tmp_path)
    env = terminal_env(ENIGMA_FAULTY=json.dumps({"delay": 0.1}))
    base = [ENIGMA, "--config-dir", str(repo.enigma.config_dir)]
    code, text = run_in_terminal([*base, "backup", str(repo.source)], env)
    assert code == 0, text
    assert "\x1b[?25l" in text  # rich hid the cursor while drawing
    assert f"/{repo.files} files" in text and "•" in text and "/s" in text, text[-3000:]
    assert "ETA" in text and "backup" in text
    # Gone before the summary: the cursor is shown again after the last frame.
    assert text.rindex("•") < text.rindex("\x1b[?25h") < text.rindex("backup complete")

    help_text = subprocess.run([*base, "--help"], capture_output=True, text=True).stdout
    if "--quiet" not in help_text:
        pytest.skip("no global -q option yet (another part of issue 10)")
    code, text = run_in_terminal([*base, "-q", "backup", "--force", str(repo.source)], env)
    assert code == 0, text
    assert "\x1b[" not in text and "•" not in text, text
