"""Helpers for tests: run the real `enigma` console script in a subprocess, build test trees."""

from __future__ import annotations

import os
import random
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ENIGMA = str(Path(sys.executable).with_name("enigma"))
PASSPHRASE = "correct horse battery staple"
#: Root reads any file; without these capabilities it obeys permissions like everyone else.
UNPRIVILEGED = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


@dataclass
class Result:
    code: int
    out: str
    err: str


class Enigma:
    """Runs `enigma --config-dir DIR ...` as a user would, with the passphrase from env."""

    def __init__(self, config_dir: Path, passphrase: str | None = PASSPHRASE) -> None:
        self.config_dir = config_dir
        self.passphrase = passphrase

    def __call__(self, *args: str, passphrase: str | None = None, input: str | None = None,
                 env: dict[str, str] | None = None, unprivileged: bool = False,
                 timeout: float = 300) -> Result:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("ENIGMA_")}
        # A dead server should fail a test in seconds, not after the 30 s retry budget.
        full_env["ENIGMA_RETRY_SECONDS"] = "3"
        if os.environ.get("ENIGMA_TEST_FAST_KDF"):  # see tests/conftest.py
            full_env["ENIGMA_TEST_FAST_KDF"] = os.environ["ENIGMA_TEST_FAST_KDF"]
        chosen = passphrase if passphrase is not None else self.passphrase
        if chosen is not None:
            full_env["ENIGMA_PASSPHRASE"] = chosen
        full_env.update(env or {})
        prefix = UNPRIVILEGED if unprivileged and os.geteuid() == 0 else []
        proc = subprocess.run(
            [*prefix, ENIGMA, "--config-dir", str(self.config_dir), *args], input=input,
            capture_output=True, text=True, env=full_env, timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, **kwargs) -> Result:
        result = self(*args, **kwargs)
        assert result.code == 0, f"enigma {' '.join(args)} failed ({result.code}): {result.err}"
        return result


def assert_clean_error(result: Result, *fragments: str, code: int | None = None) -> None:
    """A user error: non-zero exit, one line on stderr, no traceback, naming what's wrong."""
    assert result.code != 0, result
    if code is not None:
        assert result.code == code, result
    assert "Traceback" not in result.err, result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {result.err!r}"
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def make_tree(root: Path, *, big_file_size: int = 0, seed: int = 1) -> Path:
    """A tree with every kind of entry restore must bring back."""
    rng = random.Random(seed)
    (root / "docs" / "nested" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "docs" / "readme.txt").write_text("hello enigma\n" * 1000)
    (root / "docs" / "nested" / "data.bin").write_bytes(rng.randbytes(300_000))
    (root / "docs" / "nested" / "deeper" / "copy.bin").write_bytes(
        (root / "docs" / "nested" / "data.bin").read_bytes())
    (root / "empty.txt").write_bytes(b"")
    (root / "ünïcødé 文件 🚀.txt").write_text("unicode name\n")
    (root / "spaces and +plus.txt").write_text("x")
    (root / "back\\slash.txt").write_text("a backslash is legal in a POSIX name")
    (root / "exec.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "exec.sh").chmod(0o755)
    (root / "private.txt").write_text("secret")
    (root / "private.txt").chmod(0o600)
    os.symlink("docs/readme.txt", root / "link-relative")
    os.symlink("/nonexistent/target", root / "link-dangling")
    os.symlink("docs", root / "link-to-dir")
    if big_file_size:
        with open(root / "big.bin", "wb") as out:
            left = big_file_size
            while left:
                block = rng.randbytes(min(left, 8 << 20))
                out.write(block)
                left -= len(block)
    os.utime(root / "docs" / "readme.txt", ns=(1_600_000_000_123_456_789,) * 2)
    os.utime(root / "empty-dir", ns=(1_500_000_000_000_000_000,) * 2)
    return root


def many_files(root: Path) -> Path:
    """2,400 small files in 60 directories: a manifest of a few hundred pages, where one
    more file changes a few of them (a tiny manifest changes in most of its pages)."""
    for i in range(60):
        (root / f"d{i}").mkdir(parents=True)
        for j in range(40):
            (root / f"d{i}" / f"f{j}.txt").write_text(f"file {i} {j}\n")
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything restore promises to bring back, per relative path."""
    result: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                result[rel] = ("symlink", os.readlink(path), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                result[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                result[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns,
                               file_digest(path))
    return result


def file_digest(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def restored_root(dest: Path, source: Path) -> Path:
    """Where a source directory lands under DEST (its absolute path, minus the leading '/')."""
    return dest / str(source.resolve()).lstrip("/")


def chunk_files(config_dir: Path) -> list[Path]:
    return sorted(p for p in (config_dir / "storage" / "chunks").rglob("*") if p.is_file())


def manifest_objects(config_dir: Path) -> tuple[set[str], int]:
    """The object names the manifest says are stored (a whole object per large chunk, one
    pack object per pack of small chunks: packs are on by default, tests/test_packs.py)
    and how many of them are packs; asserts there are both kinds."""
    from enigma.chunkstore import chunk_key
    from enigma.manifest import Manifest
    from enigma.packs import pack_key

    with Manifest(config_dir / "manifest.db") as manifest:
        rows = list(manifest.iter_chunks())
    singles = {chunk_key(r.id) for r in rows if r.pack is None}
    packs = {pack_key(r.pack) for r in rows if r.pack is not None}
    assert singles and packs, "expected both whole chunk objects and packs"
    return singles | packs, len(packs)


@contextmanager
def manifest_at_schema(path: Path, version: int) -> Iterator:
    """A manifest opened as the Enigma of schema ``version`` did (later migrations not
    applied), to write rows the way it wrote them before a migration test reopens it."""
    import pytest

    import enigma.manifest as manifest_module

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(manifest_module, "MIGRATIONS", manifest_module.MIGRATIONS[:version])
        patch.setattr(manifest_module, "SCHEMA_VERSION", version)
        with manifest_module.Manifest(path) as old:
            yield old


@contextmanager
def open_repo(config_dir: Path) -> Iterator:
    """The repository in ``config_dir``, opened in this process (keys unlocked on use)."""
    from enigma.config import load_config
    from enigma.plugin_manager import PluginManager
    from enigma.repository import Repository

    repo = Repository(load_config(config_dir), PluginManager(), lambda confirm: PASSPHRASE)
    try:
        yield repo
    finally:
        repo.close()
