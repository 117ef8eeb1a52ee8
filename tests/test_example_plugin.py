"""The plugin author's kit end to end: ``examples/plugin-flatdir`` in a fresh virtual env.

A third party's plugin is a separate distribution that finds Enigma only through the
``enigma`` entry-point group. This test installs the core and the example, both built from
source as ordinary (non-editable) wheels, into a brand-new venv that holds no other Enigma
distribution, then checks that ``enigma plugins --json`` shows the example, that a real
``init`` / ``backup`` / ``verify`` / ``restore`` through its storage type round-trips
bit-exact, and that the example's own contract tests pass there.

How the venv is made (robust, offline for the heavy parts, about 15 s):

- ``python -m venv --without-pip``: no system site-packages, so nothing leaks in from
  the shared ``.venv`` (its editable ``enigma``, the in-repo plugins under ``plugins/``).
- The runtime dependencies of ``enigma`` (pluggy, click, cryptography, ...) plus pytest
  and pip are *linked* from the environment running this test: every top-level entry their
  ``RECORD`` lists, dist-info included, is symlinked into the new site-packages, so
  Python and pip see them as installed. No download or compile of cryptography & co.,
  and exactly the versions the rest of the suite runs against.
- ``pip install --no-deps`` then builds the two projects (from copies, so no ``build/``
  or ``*.egg-info`` lands in the shared tree). pip's build isolation fetches only the
  small build backend (setuptools) from the configured index, as ``.ci/run`` does.
  ``pip check`` afterwards proves the linked packages satisfy both projects' requirements.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath

import pytest
from helpers import PASSPHRASE, file_digest, make_tree, restored_root, snapshot
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from enigma.chunkstore import chunk_key
from enigma.manifest import Manifest
from enigma.packs import pack_key

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "plugin-flatdir"
EXAMPLE_DIST = "enigma-storage-flatdir"
#: Linked into the venv besides enigma's own requirements: the test runner and installer.
TOOLS = ("pytest", "pip")
COPY_IGNORE = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist",
                                     ".pytest_cache", ".ruff_cache", ".venv")


@dataclass
class FreshEnv:
    root: Path
    python: Path
    enigma: Path
    example_src: Path
    env: dict[str, str]

    def run(self, *args: str | os.PathLike[str], timeout: float = 300,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        # cwd: away from the checkout, or `python -c` would import ./enigma from it
        return subprocess.run([str(a) for a in args], capture_output=True, text=True,
                              env=self.env, timeout=timeout, cwd=cwd or self.root,
                              stdin=subprocess.DEVNULL)

    def ok(self, *args: str | os.PathLike[str], **kwargs) -> subprocess.CompletedProcess[str]:
        result = self.run(*args, **kwargs)
        assert result.returncode == 0, (
            f"{' '.join(map(str, args))} failed ({result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}")
        return result

    def enigma_cmd(self, config_dir: Path, *args: str | os.PathLike[str]
                   ) -> subprocess.CompletedProcess[str]:
        return self.ok(self.enigma, "--config-dir", config_dir, *args)


def requirement_closure(roots: Iterable[str]) -> list[metadata.Distribution]:
    """The installed distributions ``roots`` need at run time (extras left out)."""
    seen: dict[str, metadata.Distribution] = {}
    todo = list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        dist = metadata.distribution(name)
        seen[name] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def link_distribution(dist: metadata.Distribution, site: Path) -> None:
    """Symlink a distribution's top-level files and folders (per its RECORD) into ``site``.

    Whole top-level folders are linked, which is exact for these dependencies (none is a
    namespace package shared with other distributions).
    """
    if not dist.files:
        pytest.fail(f"{dist.metadata['Name']} has no RECORD: cannot link it into a venv")
    base = Path(dist.locate_file(""))
    tops = {PurePosixPath(f).parts[0] for f in dist.files}
    for top in sorted(tops - {"..", "__pycache__"}):
        target = site / top
        if not target.exists():
            target.symlink_to(base / top)


def enigma_runtime_requirements() -> list[str]:
    """``enigma``'s own requirements, read from the checkout (not from the shared venv)."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r).name for r in project["dependencies"]]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> FreshEnv:
    root = tmp_path_factory.mktemp("fresh-venv")
    core_src = root / "src" / "enigma"
    core_src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, core_src / name)
    shutil.copytree(REPO / "enigma", core_src / "enigma", ignore=COPY_IGNORE)
    example_src = root / "src" / EXAMPLE.name
    shutil.copytree(EXAMPLE, example_src, ignore=COPY_IGNORE)

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip()
    site = Path(purelib)
    for dist in requirement_closure([*enigma_runtime_requirements(), *TOOLS]):
        link_distribution(dist, site)

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ENIGMA_", "PYTHON", "VIRTUAL_ENV", "PIP_REQUIRE"))}
    env.update(ENIGMA_PASSPHRASE=PASSPHRASE, PYTHONDONTWRITEBYTECODE="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", PATH=f"{venv / 'bin'}{os.pathsep}"
               f"{env.get('PATH', '')}")
    made = FreshEnv(root, python, venv / "bin" / "enigma", example_src, env)
    made.ok(python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
            core_src, example_src, timeout=300)
    made.ok(python, "-m", "pip", "check")
    return made


def test_only_the_fresh_installs_are_visible(fresh: FreshEnv) -> None:
    """The venv's enigma is the built wheel, and no other Enigma distribution is there."""
    probe = fresh.ok(fresh.python, "-c", (
        "import json, enigma, enigma_storage_flatdir\n"
        "from importlib import metadata\n"
        "print(json.dumps([enigma.__file__, enigma_storage_flatdir.__file__,"
        " sorted(d.metadata['Name'] for d in metadata.distributions())]))"))
    core_file, example_file, dists = json.loads(probe.stdout)
    for path in (core_file, example_file):
        assert Path(path).is_relative_to(fresh.root / "venv"), path
    assert sorted(d for d in dists if d.startswith("enigma")) == ["enigma", EXAMPLE_DIST]


def test_enigma_plugins_lists_the_example(fresh: FreshEnv) -> None:
    listed = fresh.enigma_cmd(fresh.root / "unused-config", "plugins", "--json")
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert set(rows) == {"enigma", EXAMPLE_DIST}
    assert rows[EXAMPLE_DIST]["provides"] == {"storage": ["flatdir"]}
    assert rows[EXAMPLE_DIST]["version"] == "0.1.0"
    assert rows[EXAMPLE_DIST]["errors"] == []
    assert "warning" not in listed.stderr
    table = fresh.enigma_cmd(fresh.root / "unused-config", "plugins").stdout
    assert EXAMPLE_DIST in table and "storage: flatdir" in table


def test_backup_and_restore_through_the_example_storage(fresh: FreshEnv,
                                                        tmp_path: Path) -> None:
    config_dir = tmp_path / "config"
    drive = tmp_path / "usb-drive"  # created by `enigma init` through create_bucket()
    config_dir.mkdir()
    (config_dir / "enigma.toml").write_text(
        "[enigma]\n"
        'key_provider = "local"\n'
        "\n"
        "[[providers]]\n"
        'name = "usb"\n'
        'type = "FlatDir"\n'
        f"path = {json.dumps(str(drive))}\n")
    fresh.enigma_cmd(config_dir, "init")
    assert drive.is_dir()

    source = make_tree(tmp_path / "source", big_file_size=3 * 1024 * 1024)
    result = json.loads(fresh.enigma_cmd(config_dir, "backup", "--json", source).stdout)
    assert result["status"] == "complete", result
    assert result["stats"]["chunks_new"] >= 1

    entries = list(drive.iterdir())
    assert entries and all(p.is_file() for p in entries), "flatdir made a sub-directory"
    # One object per chunk of the big file, one per pack of small chunks (the default,
    # tests/test_packs.py): both kinds of object are stored and read through the plugin.
    with Manifest(config_dir / "manifest.db") as manifest:
        rows = list(manifest.iter_chunks())
    assert len(rows) == result["stats"]["chunks_new"]
    expected = {(chunk_key(r.id) if r.pack is None else pack_key(r.pack)).replace("/", "%2F")
                for r in rows}
    stored = {p.name for p in entries if p.name.startswith(("chunks%2F", "packs%2F"))}
    assert stored == expected
    assert any(r.pack is None for r in rows) and any(r.pack is not None for r in rows)
    assert not (config_dir / "storage").exists(), "chunks went to the default local storage"

    fresh.enigma_cmd(config_dir, "verify", result["backup_id"])
    dest = tmp_path / "restored"
    fresh.enigma_cmd(config_dir, "restore", result["backup_id"], dest)
    assert snapshot(restored_root(dest, source)) == snapshot(source)
    assert file_digest(restored_root(dest, source) / "big.bin") == file_digest(source / "big.bin")


def test_the_examples_own_tests_pass_in_the_fresh_venv(fresh: FreshEnv) -> None:
    run = fresh.ok(fresh.python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   cwd=fresh.example_src, timeout=300)
    summary = run.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "skipped" not in summary, \
        run.stdout
