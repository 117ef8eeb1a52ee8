"""The real CLI over a misbehaving backend: correct data or one clean error, never silence.

Each test makes a repository whose only provider is ``Faulty`` and sets the faults per run
through ``ENIGMA_FAULTY`` (the journal proves faults were really injected). Where the
faults are certain (rate 1) a test also runs with small chunks in pack objects, the
faults hitting the packs' ranged reads and their puts; fault rates below 1 need many
objects to be sure to hit, so those tests store every chunk as an object of its own.
"""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import pytest
from helpers import Enigma, assert_clean_error, make_tree, restored_root, snapshot

SMALL_CDC = "[enigma.chunk_strategy.Cdc]\nmin_size = 16384\navg_size = 65536\nmax_size = 262144\n"
#: What a detected corruption may be called (a flip in the header fails before the tag;
#: check's size probe sees a truncated read as a short object, a packed chunk's read as
#: a cut-short pack).
DETECTED = re.compile(r"authentication failed|bad magic|truncated|header|key version"
                      r"|format version|shorter|cut short")


class Repo:
    """A repository on one Faulty provider, with a fault journal.

    Faults are drawn per object (``chunks/`` ones by default), so every chunk is an object
    of its own (``pack_size = 0``) unless ``packs``: then small chunks go into pack objects
    (the default, tests/test_packs.py) and the faults hit those (``prefix = "packs/"``).
    """

    def __init__(self, tmp_path: Path, *, packs: bool = False) -> None:
        self.enigma = Enigma(tmp_path / "config")
        self.journal = tmp_path / "faults.log"
        self.store = tmp_path / "store"
        self.enigma.config_dir.mkdir()
        layout = "" if packs else "pack_size = 0\n"
        prefix = 'prefix = "packs/"\n' if packs else ""
        (self.enigma.config_dir / "enigma.toml").write_text(
            f"[enigma]\n{layout}{SMALL_CDC}\n[enigma.compression]\nenabled = true\n\n"
            f'[[providers]]\nname = "flaky"\ntype = "Faulty"\npath = "{self.store}"\n'
            f'seed = 11\njournal = "{self.journal}"\n{prefix}')
        self.enigma.ok("init")
        self.source = make_tree(tmp_path / "src")
        rng = random.Random(5)
        for i in range(6):
            (self.source / f"blob{i}.bin").write_bytes(rng.randbytes(150_000 + i * 40_000))

    def run(self, *args: str, faults: dict | None = None, retry: float = 3):
        env = {"ENIGMA_FAULTY": json.dumps(faults or {}), "ENIGMA_RETRY_SECONDS": str(retry)}
        return self.enigma(*args, env=env)

    def faults(self, kind: str) -> int:
        if not self.journal.exists():
            return 0
        return sum(line.startswith(kind + " ") for line in self.journal.read_text().splitlines())

    def backup_id(self, out: str) -> str:
        # The summary is the last line (status lines precede it once a run takes over 1 s).
        return json.loads(out.strip().splitlines()[-1])["backup_id"]


@pytest.fixture
def repo(tmp_path: Path, request: pytest.FixtureRequest) -> Repo:
    return Repo(tmp_path, packs=getattr(request, "param", False))


#: Run a test on both layouts: every chunk its own object, and small chunks in packs.
BOTH_LAYOUTS = pytest.mark.parametrize("repo", [False, True], ids=["objects", "packs"],
                                       indirect=True)


def assert_restores(repo: Repo, backup_id: str, dest: Path, faults: dict | None = None) -> None:
    # Transient faults get the same retry budget as the backup that survived them.
    result = repo.run("restore", backup_id, str(dest), faults=faults, retry=20)
    assert result.code == 0, result.err
    assert snapshot(restored_root(dest, repo.source)) == snapshot(repo.source)


def test_transient_faults_are_retried_and_data_is_exact(repo: Repo, tmp_path: Path) -> None:
    faults = {"put_error": 0.15, "get_error": 0.15, "timeout": 0.03, "timeout_seconds": 0.05,
              "delay": 0.005, "stale_list": 0.5}
    backup = repo.run("backup", "--json", str(repo.source), faults=faults, retry=20)
    assert backup.code == 0, backup.err
    assert repo.faults("transient") > 0
    backup_id = repo.backup_id(backup.out)
    assert_restores(repo, backup_id, tmp_path / "out", faults)
    check = repo.run("check", "--read-data", faults=faults, retry=20)
    assert check.code == 0, check.err
    assert repo.faults("transient") > 5 and repo.faults("stale") > 0


# Packed, the source fits in about one pack, which a rate of 0.5 may spare: all puts fail.
@pytest.mark.parametrize(("repo", "rate"), [(False, 0.5), (True, 1)], ids=["objects", "packs"],
                         indirect=["repo"])
def test_permanent_put_failure_stops_cleanly_and_a_rerun_completes(repo: Repo, rate: float,
                                                                   tmp_path: Path) -> None:
    failed = repo.run("backup", str(repo.source), faults={"put_permanent": rate})
    assert_clean_error(failed, "flaky", "injected permanent failure")
    assert repo.faults("permanent") > 0
    check = repo.run("check")  # what the failed run recorded is all really there
    assert check.code == 0, check.err
    again = repo.run("backup", "--json", str(repo.source))
    assert again.code == 0, again.err
    assert_restores(repo, repo.backup_id(again.out), tmp_path / "out")


@BOTH_LAYOUTS
@pytest.mark.parametrize("damage", ["bitflip", "truncate"])
def test_every_corrupted_read_is_detected(repo: Repo, tmp_path: Path, damage: str) -> None:
    backup = repo.run("backup", "--json", str(repo.source))
    assert backup.code == 0, backup.err
    backup_id = repo.backup_id(backup.out)
    dest = tmp_path / "out"
    restore = repo.run("restore", backup_id, str(dest), faults={damage: 1})
    assert restore.code != 0 and "Traceback" not in restore.err
    lines = restore.err.splitlines()
    assert lines[-1].startswith("enigma: error: restore incomplete"), restore.err
    damaged = [line for line in lines if line.startswith("damaged: ")]
    assert damaged, restore.err
    for line in damaged:  # each file it could not restore, with the detected cause
        assert DETECTED.search(line), line
    assert repo.faults(damage) > 0
    # Nothing damaged was written as if it were good: every file restored is exact.
    original = snapshot(repo.source)
    restored = restored_root(dest, repo.source)
    if restored.exists():
        for rel, entry in snapshot(restored).items():
            if entry[0] == "file" and rel in original:
                assert entry[3] == original[rel][3], f"{rel} restored with wrong content"
    verify = repo.run("verify", backup_id, faults={damage: 1})
    assert verify.code == 1 and "damaged" in verify.err
    assert DETECTED.search(verify.err), verify.err
    check = repo.run("check", "--read-data", faults={damage: 1})
    assert check.code == 1 and DETECTED.search(check.out + check.err)
    assert_restores(repo, backup_id, tmp_path / "clean")  # the stored data was fine


@BOTH_LAYOUTS
def test_retries_stay_bounded_on_write(repo: Repo) -> None:
    started = time.monotonic()
    faults = {"timeout": 1, "timeout_seconds": 0.1}  # every chunk put stalls, then fails
    result = repo.run("backup", str(repo.source), faults=faults, retry=1.5)
    elapsed = time.monotonic() - started
    assert_clean_error(result, "flaky", "gave up after")
    assert elapsed < 30, f"a 1.5 s retry budget took {elapsed:.1f} s"


@BOTH_LAYOUTS
def test_retries_stay_bounded_on_read(repo: Repo, tmp_path: Path) -> None:
    backup = repo.run("backup", "--json", str(repo.source))
    assert backup.code == 0, backup.err
    started = time.monotonic()
    result = repo.run("restore", repo.backup_id(backup.out), str(tmp_path / "out"),
                      faults={"get_error": 1}, retry=0.5)
    elapsed = time.monotonic() - started
    # Restore reports each file it could not read, then fails with one summary line.
    assert result.code != 0 and "Traceback" not in result.err
    assert result.err.splitlines()[-1].startswith("enigma: error: restore incomplete")
    spent = [float(s) for s in re.findall(r"gave up after \d+ tries in ([\d.]+) s", result.err)]
    assert spent and max(spent) <= 0.5, result.err
    assert elapsed < 40, f"restoring with a 0.5 s retry budget took {elapsed:.1f} s"


def test_bad_fault_options_are_one_line(repo: Repo) -> None:
    assert_clean_error(repo.run("backup", str(repo.source), faults={"bitflip": 7}),
                       "'bitflip' must be a number from 0 to 1")
