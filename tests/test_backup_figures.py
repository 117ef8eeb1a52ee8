"""A finished backup's figures (chunks written and deduplicated, ratios, backend errors and
retries by provider) in ``backup --json`` and the backup log, and the partial stats a
running backup records for watchers such as the dashboard."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from helpers import ENIGMA, PASSPHRASE, Enigma

from enigma.manifest import BackupRecord, Manifest

RANDOM_SIZE = 3_000_000


def faulty_repo(tmp_path: Path, **faults: float) -> tuple[Enigma, Path]:
    """A repository on one ``Faulty`` provider (fault journal beside it), compression on.

    Faults and delays are drawn per chunk object, so every chunk is an object of its own
    (``pack_size = 0``; packs are covered in tests/test_packs.py)."""
    runner = Enigma(tmp_path / "config")
    journal = tmp_path / "faults.log"
    runner.config_dir.mkdir()
    options = "".join(f"{name} = {value}\n" for name, value in faults.items())
    (runner.config_dir / "enigma.toml").write_text(
        "[enigma]\npack_size = 0\n[enigma.compression]\nenabled = true\n\n"
        f'[[providers]]\nname = "flaky"\ntype = "Faulty"\npath = "{tmp_path / "store"}"\n'
        f'seed = 5\njournal = "{journal}"\n{options}')
    runner.ok("init")
    return runner, journal


def summary(out: str) -> dict[str, Any]:
    """The result object of ``--json`` (a last "summary" line if progress lines precede)."""
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        return json.loads(out.strip().splitlines()[-1])


def test_backup_reports_dedup_compression_and_backend_figures(tmp_path: Path) -> None:
    runner, journal = faulty_repo(tmp_path, put_error=0.5)
    source = tmp_path / "src"
    source.mkdir()
    # The fault dice depend on the chunk ids (keyed by this repository's random id key):
    # 20 more one-chunk files make "no fault injected" a one-in-a-million event.
    small = [random.Random(10 + i).randbytes(2000 + i) for i in range(20)]
    for i, data in enumerate(small):
        (source / f"small{i:02}.bin").write_bytes(data)
    noise = random.Random(1).randbytes(RANDOM_SIZE)
    (source / "a.bin").write_bytes(noise)
    (source / "copy-of-a.bin").write_bytes(noise)  # every chunk a duplicate of a.bin's
    text = b"".join(b"%08d a compressible line of text\n" % i for i in range(60_000))
    (source / "log.txt").write_bytes(text)

    result = summary(runner.ok("backup", "--json", str(source),
                               env={"ENIGMA_RETRY_SECONDS": "60"}).out)
    stats = result["stats"]
    extra = sum(len(d) for d in small)
    assert stats["bytes_read"] == 2 * RANDOM_SIZE + len(text) + extra
    assert stats["bytes_new"] == RANDOM_SIZE + len(text) + extra
    assert stats["bytes_deduplicated"] == RANDOM_SIZE
    assert stats["chunks_deduplicated"] >= 1
    assert stats["chunks_new"] + stats["chunks_deduplicated"] == stats["chunks"]
    assert stats["dedup_ratio"] == round(stats["bytes_read"] / stats["bytes_new"], 3)
    assert stats["compression_ratio"] == round(stats["bytes_new"] / stats["bytes_stored"], 3)
    assert stats["compression_ratio"] > 1.3  # the text compressed, the noise did not
    assert journal.exists(), "no put fault was injected"
    injected = [line for line in journal.read_text().splitlines()
                if line.startswith("transient put chunks/")]
    assert stats["backend_retries"] == {"flaky": len(injected)}
    assert stats["backend_errors"] == {"flaky": len(injected)}

    log = runner.ok("log", result["backup_id"]).out
    assert f"{stats['chunks_new']} chunks written" in log
    assert f"{stats['chunks_deduplicated']} deduplicated" in log
    assert f"compression ratio {stats['compression_ratio']:.2f}" in log
    assert f"retries flaky {len(injected)}" in log

    again = summary(runner.ok("backup", "--json", "--force", str(source)).out)["stats"]
    assert again["chunks_new"] == 0 and again["dedup_ratio"] is None
    assert again["bytes_deduplicated"] == again["bytes_read"]
    assert again["backend_errors"] == {} and again["backend_retries"] == {}


def running_stats(db: Path) -> dict[str, Any] | None:
    """The stats of a running backup, read as another process would (read-only)."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("SELECT stats FROM backups WHERE status = 'running'").fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return None
    return json.loads(row[0]) if row and row[0] else None


def watch_backup(runner: Enigma, *args: str) -> list[dict[str, Any]]:
    """Run ``enigma [args] backup ...`` and collect every distinct partial stats record
    seen in the manifest while it runs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENIGMA_")}
    env.update(ENIGMA_PASSPHRASE=PASSPHRASE, ENIGMA_TEST_FAST_KDF="1")
    proc = subprocess.Popen([ENIGMA, "--config-dir", str(runner.config_dir), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    seen: list[dict[str, Any]] = []
    try:
        while proc.poll() is None:
            stats = running_stats(runner.config_dir / "manifest.db")
            if stats and (not seen or stats != seen[-1]):
                seen.append(stats)
            time.sleep(0.1)
    finally:
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert seen, "no partial stats were recorded while the backup ran"
    return seen


def test_running_backup_records_partial_stats(tmp_path: Path) -> None:
    runner, _ = faulty_repo(tmp_path, delay=0.5)  # each chunk put takes 0-0.5 s
    source = tmp_path / "src"
    source.mkdir()
    rng = random.Random(2)
    for i in range(24):
        (source / f"f{i:02}.bin").write_bytes(rng.randbytes(100_000))
    seen = watch_backup(runner, "backup", str(source))
    assert all(s["files"] == 24 for s in seen[1:])
    partial_bytes = [s["bytes_new"] for s in seen]
    assert partial_bytes == sorted(partial_bytes)  # they only grow
    assert 0 < partial_bytes[-1] < 24 * 100_000  # seen mid-way, not only at the end
    manifest = Manifest(runner.config_dir / "manifest.db")
    try:
        (final,) = manifest.list_backups()
        assert final.status == "complete"
        assert final.stats["bytes_new"] == 24 * 100_000
    finally:
        manifest.close()


def test_partial_stats_move_inside_one_big_file(tmp_path: Path) -> None:
    """One file twice the pipeline's 24 MiB in-flight budget, uploads paced at 8 MiB/s:
    reading stays ~3 s ahead of the uploads, and the bytes read so far show meanwhile."""
    runner = Enigma(tmp_path / "config")
    runner.ok("init")
    source = tmp_path / "src"
    source.mkdir()
    size = 48 * 1024 * 1024
    (source / "big.bin").write_bytes(os.urandom(size))
    seen = watch_backup(runner, "--limit-upload", "8192", "backup", str(source))
    assert any(s["files"] == 0 and 0 < s["bytes_read"] < size for s in seen), seen


def test_progress_never_overwrites_a_finished_backup(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path / "m.db")
    try:
        manifest.begin_backup(BackupRecord(id="b1", created_at=1.0, sources=["/x"],
                                           hostname="h", params={}))
        manifest.backup_progress("b1", {"files": 3})
        assert manifest.list_backups()[0].stats == {"files": 3}
        manifest.finish_backup("b1", 2.0, "complete", {"files": 5})
        manifest.backup_progress("b1", {"files": 4})  # a late writer
        assert manifest.list_backups()[0].stats == {"files": 5}
        manifest.backup_progress("missing", {"files": 1})  # no such backup: no row, no error
        assert len(manifest.list_backups()) == 1
    finally:
        manifest.close()
