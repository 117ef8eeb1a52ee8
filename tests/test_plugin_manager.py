"""The plugin contract of DESIGN.md section 3: discovery, isolation, conflicts, missing types."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import Enigma

from enigma import hookimpl
from enigma.errors import ConfigError, PluginError
from enigma.interfaces import StorageProvider
from enigma.plugin_manager import PluginManager, construct, normalize
from enigma.plugins.local_storage import LocalStorage


def storage_plugin(type_name: str, aliases: tuple[str, ...] = ()) -> SimpleNamespace:
    cls = type(f"Storage_{type_name}", (LocalStorage,), {"name": type_name, "aliases": aliases})
    return SimpleNamespace(register_storage_providers=hookimpl(lambda: [cls]), cls=cls)


def fresh() -> PluginManager:
    return PluginManager(load_entrypoints=False)


def test_builtins_come_from_the_entry_point() -> None:
    pm = PluginManager()
    assert pm.get("storage", "Local") is LocalStorage
    assert pm.get("distribution", "RoundRobin").name == "round-robin"
    assert pm.get("distribution", "round_robin").name == "round-robin"
    assert pm.get("chunker", "Cdc").name == "cdc"
    assert pm.get("key_provider", "local").name == "local"
    assert pm.get("compressor", "ZSTD").name == "zstd"
    (core,) = [row for row in pm.describe() if row.name == "enigma"]
    assert core.version and core.provides["storage"] == ["local"] and not core.errors


def test_missing_type_names_the_package_to_install() -> None:
    pm = fresh()
    pm.register(storage_plugin("local"), "enigma-test")
    with pytest.raises(PluginError) as err:
        pm.get("storage", "Gcs")
    assert str(err.value) == ("unknown storage type 'Gcs' (installed: local); install it "
                              "with: pip install enigma-storage-gcs")
    with pytest.raises(PluginError, match="pip install enigma-storage-s3"):
        pm.get("storage", "minio")
    with pytest.raises(PluginError, match=r"enigma-keys-vault\[azure\]"):
        pm.get("key_provider", "azure-keyvault")
    with pytest.raises(PluginError, match=r"unknown chunker 'weird' \(installed: none\)$"):
        pm.get("chunker", "weird")


@pytest.mark.parametrize("order", [("one", "two"), ("two", "one")])
def test_conflict_is_reported_whatever_the_install_order(order: tuple[str, str]) -> None:
    pm = fresh()
    plugins = {"one": storage_plugin("dup"), "two": storage_plugin("other", aliases=("DUP",))}
    for name in order:
        pm.register(plugins[name], f"dist-{name}")
    with pytest.raises(PluginError) as err:
        pm.get("storage", "dup")
    message = str(err.value)
    assert "more than one plugin" in message
    assert "dist-one" in message and "dist-two" in message
    assert pm.get("storage", "other") is plugins["two"].cls  # the unambiguous name works


def test_broken_third_party_hook_is_isolated_but_builtin_failure_is_loud(capsys) -> None:
    pm = fresh()
    good = storage_plugin("good")

    def explode():
        raise RuntimeError("boom")

    pm.register(SimpleNamespace(register_storage_providers=hookimpl(explode)), "broken-dist")
    pm.register(SimpleNamespace(register_compressors=hookimpl(lambda: [object])), "odd-dist")
    pm.register(good, "good-dist")
    assert pm.get("storage", "good") is good.cls
    assert pm.available("compressor") == []
    failures = {f.distribution: f.error for f in pm.failures}
    assert "RuntimeError: boom" in failures["broken-dist"]
    assert "not a Compressor subclass" in failures["odd-dist"]
    assert capsys.readouterr().err.count("warning: plugin") == 2
    rows = {row.name: row for row in pm.describe()}
    assert rows["broken-dist"].errors and rows["good-dist"].provides == {"storage": ["good"]}

    core = fresh()
    core.register(SimpleNamespace(register_storage_providers=hookimpl(explode)), "enigma")
    with pytest.raises(RuntimeError, match="boom"):
        core.get("storage", "local")


def test_construct_checks_options_against_the_constructor() -> None:
    def where(key):
        return f"file:3: [[providers]] #1 '{key}'"

    with pytest.raises(ConfigError, match=r"'colour': unknown option for local \(accepted: path"):
        construct(LocalStorage, {"path": "/tmp", "colour": 1}, where)

    class NeedsBucket(StorageProvider):
        name = "needs-bucket"

        def __init__(self, *, bucket: str) -> None:
            self.bucket = bucket

        put = get = delete = exists = list = None  # type: ignore[assignment]

    NeedsBucket.__abstractmethods__ = frozenset()
    with pytest.raises(ConfigError, match="'bucket': missing, required by needs-bucket"):
        construct(NeedsBucket, {}, where)
    assert construct(NeedsBucket, {"bucket": "b"}, where).bucket == "b"


def test_normalize() -> None:
    assert normalize("Round-Robin") == normalize("round_robin") == "roundrobin"
    assert normalize("S3Compatible") == "s3compatible"


def write_distribution(site: Path, dist: str, modules: dict[str, str], entry: str) -> None:
    """A minimal installed distribution: a module and a dist-info with an entry point."""
    for name, source in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[enigma]\n{dist} = {entry}\n")


def test_entry_point_plugins_in_a_real_process(tmp_path: Path) -> None:
    """A broken plugin never takes the CLI down; a good one adds types and commands."""
    site = tmp_path / "site"
    site.mkdir()
    write_distribution(site, "enigma-broken", {"broken_mod": "import not_a_module_anywhere\n"},
                       "broken_mod")
    write_distribution(site, "enigma-hello", {"hello_mod": '''
        import click
        from enigma import hookimpl
        from enigma.interfaces import Compressor

        import zlib

        class Zlib(Compressor):
            name = "zlib"
            def compress(self, data):
                return zlib.compress(data)
            def decompress(self, data, max_size):
                return zlib.decompress(data)

        @hookimpl
        def register_compressors():
            return Zlib

        @hookimpl
        def register_commands(cli):
            @cli.command()
            def hello():
                """Say hello from a plugin."""
                click.echo("hello from a plugin")
        '''}, "hello_mod")
    env = {"PYTHONPATH": str(site) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    runner = Enigma(tmp_path / "config")

    listed = runner.ok("plugins", "--json", env=env)
    rows = {row["name"]: row for row in json.loads(listed.out)}
    assert rows["enigma-hello"]["provides"] == {"compressor": ["zlib"]}
    assert rows["enigma-hello"]["version"] == "1.2.3"
    assert "ModuleNotFoundError" in rows["enigma-broken"]["errors"][0]
    assert listed.err.count("warning: plugin 'enigma-broken'") == 1
    table = runner.ok("plugins", env=env).out
    assert "enigma-broken" in table and "ERROR: failed to load" in table

    assert runner.ok("hello", env=env).out.strip() == "hello from a plugin"
    assert "hello" in runner.ok("--help", env=env).out

    # The plugin's compressor is used by a real backup and restore.
    runner.config_dir.mkdir()
    (runner.config_dir / "enigma.toml").write_text(
        '[enigma]\n[enigma.compression]\nalgorithm = "zlib"\n')
    runner.ok("init", env=env)
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("a" * 10_000)
    backup_id = runner.ok("backup", str(source), env=env).out.strip()
    # One small chunk: packed (tests/test_packs.py), first in its pack, so its header
    # starts the only object stored.
    storage = runner.config_dir / "storage"
    (stored,) = [*storage.glob("chunks/*/*"), *storage.glob("packs/*/*")]
    assert b"zlib" in stored.read_bytes()[:16]  # the header names the plugin's compressor
    runner.ok("restore", backup_id, str(tmp_path / "out"), env=env)
    restored = tmp_path / "out" / str(source).lstrip("/") / "a.txt"
    assert restored.read_text() == "a" * 10_000


def test_serve_without_a_server_plugin(tmp_path: Path) -> None:
    # A core-only install: enigma-gateway-s3 (plugins/gateway-s3) is installed in CI.
    result = Enigma(tmp_path / "config")("serve", env={"ENIGMA_LOAD_PLUGINS": ""})
    assert result.code == 1 and "pip install enigma-gateway-s3" in result.err
