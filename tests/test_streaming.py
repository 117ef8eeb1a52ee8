"""Backup and restore stream: peak memory does not grow with the size of a file.

The same tree with a 16 MiB and with a 200 MiB random file is backed up and restored by
the real ``enigma`` command, each in its own repository; the peak RSS of each process
(from ``os.wait4``, so for that child alone) is compared. Unlocking the keystore costs a
constant 64 MiB (Argon2id), the same in both runs.

Backup and restore both keep up to ``DEFAULT_BUDGET`` bytes of plaintext chunks in flight
(each briefly also sealed): a 16 MiB file never fills that budget and a 200 MiB file does,
so the peak may grow by that bounded amount, and no more, however big the file (a 400 MiB
file peaks like a 200 MiB one). Memory proportional to the file would grow by ~184 MiB
and break the absolute ceiling too.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ENIGMA, PASSPHRASE, Enigma, file_digest, restored_root

from enigma.pipeline import DEFAULT_BUDGET

MiB = 1 << 20
SMALL = 16 * MiB
LARGE = 200 * MiB
#: Slack on top of the budget: allocator arenas, thread stacks, measurement noise.
MAX_GROWTH = 40 * MiB
#: The in-flight budget, filled by the large file only (plaintext and sealed copies).
MAX_BUDGET_GROWTH = MAX_GROWTH + 2 * DEFAULT_BUDGET
#: Absolute ceiling for any one backup or restore process.
MAX_PEAK = 250 * MiB


def write_random(path: Path, size: int, seed: int) -> Path:
    rng = random.Random(seed)
    with open(path, "wb") as out:
        left = size
        while left:
            block = rng.randbytes(min(left, 8 * MiB))
            out.write(block)
            left -= len(block)
    return path


#: Runs a command and writes its own peak RSS (KiB) and exit code to a file. On Linux a
#: child's ``ru_maxrss`` starts at the RSS of the process it was forked from (exec keeps
#: the old high-water mark), so spawning from pytest, whose RSS depends on the tests that
#: ran before, would measure pytest; this ~10 MiB launcher is the floor instead.
LAUNCHER = """\
import os, sys
result, argv = sys.argv[1], sys.argv[2:]
pid = os.posix_spawnp(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
with open(result, "w") as f:
    f.write(f"{usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""


def peak_rss(enigma: Enigma, *args: str) -> tuple[int, str]:
    """Run ``enigma ARGS`` and return (peak RSS in bytes of that process alone, stdout)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENIGMA_")}
    env["ENIGMA_PASSPHRASE"] = PASSPHRASE
    result = enigma.config_dir.parent / "rusage.txt"
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", LAUNCHER, str(result), ENIGMA, "--config-dir",
         str(enigma.config_dir), *args],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, f"launcher failed: {proc.stderr}"
    rss_kib, code = (int(field) for field in result.read_text().split())
    assert code == 0, f"enigma {' '.join(args)} failed: {proc.stderr}"
    return rss_kib * 1024, proc.stdout  # Linux reports KiB


def round_trip(tmp_path: Path, name: str, size: int) -> tuple[int, int]:
    """Back up and restore one random file in a fresh repository; (backup, restore) peaks."""
    base = tmp_path / name
    source = base / "src"
    source.mkdir(parents=True)
    data = write_random(source / "data.bin", size, seed=size)
    enigma = Enigma(base / "config")
    enigma.ok("init")
    backup_peak, out = peak_rss(enigma, "backup", str(source))
    backup_id = out.strip()
    dest = base / "restore"
    restore_peak, _ = peak_rss(enigma, "restore", backup_id, str(dest))
    restored = restored_root(dest, source) / "data.bin"
    assert restored.stat().st_size == size
    assert file_digest(restored) == file_digest(data), "restore is not bit-exact"
    return backup_peak, restore_peak


@pytest.mark.skipif(not hasattr(os, "wait4"), reason="needs os.wait4 for per-child rusage")
def test_peak_memory_does_not_grow_with_file_size(tmp_path: Path) -> None:
    small_backup, small_restore = round_trip(tmp_path, "small", SMALL)
    large_backup, large_restore = round_trip(tmp_path, "large", LARGE)
    report = (
        f"peak RSS MiB: backup {small_backup / MiB:.1f} -> {large_backup / MiB:.1f}, "
        f"restore {small_restore / MiB:.1f} -> {large_restore / MiB:.1f}"
    )
    print(report)
    assert large_backup - small_backup < MAX_BUDGET_GROWTH, report
    assert large_restore - small_restore < MAX_BUDGET_GROWTH, report
    # Holding the 200 MiB file whole (plus the sealed chunks in flight) would break this.
    for peak in (small_backup, small_restore, large_backup, large_restore):
        assert peak < MAX_PEAK, report
