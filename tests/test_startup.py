"""Start-up stays fast with every plugin installed: no cloud SDK is imported to list or help."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from helpers import ENIGMA, Enigma

HEAVY = ("boto3", "botocore", "azure", "google", "pyfastcdc", "zstandard", "argon2")


def imported_modules(*args: str) -> set[str]:
    """Top-level packages a real `enigma` process imports, from -X importtime."""
    code = "import sys; from enigma.cli import main; sys.argv = ['enigma', *sys.argv[1:]]; main()"
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code, *args],
                          capture_output=True, text=True, env={**os.environ,
                                                               "ENIGMA_PASSPHRASE": "x"})
    names = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_help_and_list_import_no_heavy_library(tmp_path: Path) -> None:
    runner = Enigma(tmp_path / "config")
    runner.ok("init")
    for args in (["--help"], ["--config-dir", str(runner.config_dir), "list"]):
        loaded = imported_modules(*args)
        assert "enigma" in loaded and "click" in loaded
        assert not loaded & set(HEAVY), (args, sorted(loaded & set(HEAVY)))


def test_help_and_list_start_in_under_300_ms(tmp_path: Path) -> None:
    runner = Enigma(tmp_path / "config")
    runner.ok("init")
    for args in (["--help"], ["--config-dir", str(runner.config_dir), "list"]):
        times = []
        for _ in range(5):
            start = time.perf_counter()
            subprocess.run([ENIGMA, *args], check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        assert statistics.median(times) < 0.3, (args, times)
