"""End to end through the real `enigma` command: init, backup, list, verify, restore, gc."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from helpers import (
    Enigma,
    assert_clean_error,
    make_tree,
    restored_root,
    snapshot,
)

from enigma.chunkstore import chunk_key
from enigma.manifest import ChunkRecord, Manifest
from enigma.packs import pack_key

BIG = 101 * 1024 * 1024  # "a file larger than 100 MiB"


def stored_objects(root: Path) -> list[Path]:
    """Every chunk object and pack object under a Local provider's directory (small
    chunks are stored many to a pack object by default, see tests/test_packs.py)."""
    return sorted(p for prefix in ("chunks", "packs") for p in (root / prefix).rglob("*")
                  if p.is_file())


def chunk_records(config_dir: Path) -> list[ChunkRecord]:
    with Manifest(config_dir / "manifest.db") as manifest:
        return list(manifest.iter_chunks())


def assert_store_matches_manifest(store: Path, rows: list[ChunkRecord]) -> None:
    """The objects on disk are exactly the manifest's: one per unpacked chunk, one per pack."""
    expected = {chunk_key(r.id) if r.pack is None else pack_key(r.pack) for r in rows}
    assert {p.relative_to(store).as_posix() for p in stored_objects(store)} == expected


def sealed_chunk(store: Path, record: ChunkRecord) -> bytes:
    """A chunk's sealed bytes: its own object, or its slice of its pack."""
    if record.pack is None:
        return (store / chunk_key(record.id)).read_bytes()
    with open(store / pack_key(record.pack), "rb") as pack:
        pack.seek(record.offset)
        return pack.read(record.stored_size)


def test_round_trip_mixed_tree_bit_exact(enigma: Enigma, tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src", big_file_size=BIG)
    backup_id = enigma.ok("backup", str(source)).out.strip()
    assert len(backup_id) == 16

    listing = json.loads(enigma.ok("list", "--json").out)
    assert [b["id"] for b in listing] == [backup_id]
    assert listing[0]["status"] == "complete"
    assert listing[0]["stats"]["bytes_read"] >= BIG
    assert backup_id in enigma.ok("list").out

    verified = enigma.ok("verify", backup_id[:6])
    assert "all good" in verified.out

    dest = tmp_path / "restore"
    enigma.ok("restore", backup_id, str(dest))
    assert snapshot(restored_root(dest, source)) == snapshot(source)

    # The big file's chunks are objects of their own, the small files' chunks are packed.
    store = enigma.config_dir / "storage"
    rows = chunk_records(enigma.config_dir)
    assert_store_matches_manifest(store, rows)
    objects_before = stored_objects(store)
    chunks_before = len(rows)
    packs_before = {r.pack for r in rows if r.pack is not None}
    assert packs_before and any(r.pack is None for r in rows)

    # Dedup: the duplicated 300 kB file and the second backup add no new chunks.
    second = enigma.ok("backup", "--json", str(source))
    stats = json.loads(second.out)["stats"]
    assert stats["chunks_new"] == 0 and stats["bytes_stored"] == 0
    assert stored_objects(store) == objects_before
    assert len(chunk_records(enigma.config_dir)) == chunks_before

    # gc keeps everything while a backup uses it, then frees the chunks after forget.
    assert "deleted 0 unreferenced" in enigma.ok("gc").out
    enigma.ok("forget", backup_id)
    enigma.ok("forget", json.loads(second.out)["backup_id"])
    dry = json.loads(enigma.ok("gc", "--dry-run", "--json").out)
    assert (dry["chunks"], dry["packs"]) == (chunks_before, len(packs_before))
    assert stored_objects(store) == objects_before
    enigma.ok("gc")
    assert stored_objects(store) == []
    assert json.loads(enigma.ok("status", "--json").out)["chunks"] == 0


def test_restore_filters_and_list(enigma: Enigma, tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src")
    backup_id = enigma.ok("backup", str(source)).out.strip()
    stored = str(source.resolve()).lstrip("/")

    listed = enigma.ok("restore", backup_id, "--list", "--json")
    paths = {e["path"] for e in json.loads(listed.out)}
    assert f"{stored}/empty-dir" in paths and f"{stored}/ünïcødé 文件 🚀.txt" in paths

    dest = tmp_path / "only-docs"
    enigma.ok("restore", backup_id, str(dest), "--path", f"{stored}/docs")
    got = snapshot(restored_root(dest, source))
    assert set(got) == {k for k in snapshot(source) if k == "docs" or k.startswith("docs/")}

    dest = tmp_path / "only-bin"
    enigma.ok("restore", backup_id, str(dest), "--glob", "*.bin")
    files = {k for k, v in snapshot(restored_root(dest, source)).items() if v[0] == "file"}
    assert files == {"docs/nested/data.bin", "docs/nested/deeper/copy.bin"}

    missing = enigma("restore", backup_id, str(tmp_path / "none"), "--glob", "*.nothing")
    assert_clean_error(missing, "nothing in backup")


def test_compression_and_key_rotation_keep_old_chunks_readable(tmp_path: Path) -> None:
    enigma = Enigma(tmp_path / "config")
    enigma.config_dir.mkdir()
    (enigma.config_dir / "enigma.toml").write_text(
        '[enigma]\n[enigma.compression]\nenabled = true\nlevel = 5\n'
        '[enigma.chunk_strategy.Cdc]\nmin_size = 4096\navg_size = 16384\nmax_size = 65536\n')
    enigma.ok("init")
    first_src = tmp_path / "a"
    first_src.mkdir()
    (first_src / "text.txt").write_text("compressible line of text\n" * 20000)
    (first_src / "random.bin").write_bytes(os.urandom(200_000))
    first = json.loads(enigma.ok("backup", "--json", str(first_src)).out)
    assert first["stats"]["bytes_stored"] < first["stats"]["bytes_new"]

    assert "current key version 2" in enigma.ok("key", "rotate").out
    second_src = tmp_path / "b"
    second_src.mkdir()
    (second_src / "new.txt").write_text("sealed under key two\n" * 5000)
    second = json.loads(enigma.ok("backup", "--json", str(second_src)).out)

    for backup, src in ((first, first_src), (second, second_src)):
        dest = tmp_path / f"out-{backup['backup_id']}"
        enigma.ok("restore", backup["backup_id"], str(dest))
        assert snapshot(restored_root(dest, src)) == snapshot(src)
    # Each stored chunk (whole object or slice of a pack) names the key it is sealed under.
    rows = chunk_records(enigma.config_dir)
    store = enigma.config_dir / "storage"
    headers = {sealed_chunk(store, r)[5:9] for r in rows}
    assert headers == {(1).to_bytes(4, "big"), (2).to_bytes(4, "big")}
    assert all(sealed_chunk(store, r)[5:9] == r.key_id.to_bytes(4, "big") for r in rows)
    assert enigma.ok("key", "list").out.split() == ["1", "2", "(current)"]


def test_init_layout_modes_and_rerun(tmp_path: Path) -> None:
    enigma = Enigma(tmp_path / "config")
    enigma.ok("init")
    config_dir = enigma.config_dir
    assert stat.S_IMODE(config_dir.stat().st_mode) == 0o700
    for name in ("enigma.toml", "keystore.enc", "manifest.db"):
        assert stat.S_IMODE((config_dir / name).stat().st_mode) == 0o600, name
    again = enigma.ok("init")
    assert "keys exist and unlock" in again.err
    assert_clean_error(enigma("init", passphrase="wrong"), "wrong passphrase")


def test_status_config_and_plugins(enigma: Enigma, tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src")
    enigma.ok("backup", str(source))
    status = json.loads(enigma.ok("status", "--json").out)
    assert status["backups"] == 1
    (provider,) = status["providers"]
    assert provider["name"] == "local" and provider["reachable"]
    rows = chunk_records(enigma.config_dir)
    assert provider["chunks"] == status["chunks"] == len(rows) > 0
    assert_store_matches_manifest(enigma.config_dir / "storage", rows)
    assert "reachable" in enigma.ok("status").out

    config = json.loads(enigma.ok("config", "--json").out)
    assert config["enigma"]["key_provider"] == "local"
    assert config["providers"][0]["type"] == "Local"

    plugins = json.loads(enigma.ok("plugins", "--json").out)
    core = next(p for p in plugins if p["name"] == "enigma")
    assert core["provides"]["storage"] == ["local"]
    assert set(core["provides"]["distribution"]) == {"round-robin", "weighted", "replicate",
                                                     "erasure"}
    assert core["errors"] == []
    assert "storage: local" in enigma.ok("plugins").out


def test_encrypt_cred_is_decrypted_transparently(enigma: Enigma, tmp_path: Path) -> None:
    storage = tmp_path / "elsewhere"
    token = enigma.ok("encrypt-cred", str(storage)).out.strip()
    assert token.startswith("enc:") and str(storage) not in token
    (enigma.config_dir / "enigma.toml").write_text(
        f'[enigma]\n[[providers]]\nname = "disk"\ntype = "local"\npath = "{token}"\n')
    enigma.ok("init")
    source = make_tree(tmp_path / "src")
    backup_id = enigma.ok("backup", str(source)).out.strip()
    assert stored_objects(storage)
    config_out = enigma.ok("config").out
    assert str(storage) not in config_out
    dest = tmp_path / "out"
    enigma.ok("restore", backup_id, str(dest))
    assert snapshot(restored_root(dest, source)) == snapshot(source)
    piped = enigma.ok("encrypt-cred", input="s3cr3t\n").out.strip()
    assert piped.startswith("enc:") and "s3cr3t" not in piped


def test_round_robin_spreads_chunks_over_local_providers(tmp_path: Path) -> None:
    enigma = Enigma(tmp_path / "config")
    enigma.config_dir.mkdir()
    # Counts each chunk's own object per provider: packs (tests/test_packs.py) are off.
    (enigma.config_dir / "enigma.toml").write_text(
        '[enigma]\ndistribution = "Weighted"\npack_size = 0\n'
        '[enigma.chunk_strategy.Cdc]\nmin_size = 4096\navg_size = 16384\nmax_size = 65536\n'
        + "".join(f'[[providers]]\nname = "d{i}"\ntype = "Local"\npath = "{tmp_path}/d{i}"\n'
                  f'weight = {w}\n' for i, w in enumerate((2, 1, 1))))
    enigma.ok("init")
    source = tmp_path / "src"
    source.mkdir()
    (source / "data.bin").write_bytes(os.urandom(3_000_000))
    backup_id = enigma.ok("backup", str(source)).out.strip()
    counts = [len(list((tmp_path / f"d{i}").rglob("chunks/*/*"))) for i in range(3)]
    total = sum(counts)
    assert total > 40
    # smooth weighted round-robin: 2:1:1, exact to within one cycle
    assert abs(counts[0] - total / 2) <= 2 and abs(counts[1] - total / 4) <= 2
    status = json.loads(enigma.ok("status", "--json").out)
    assert [p["chunks"] for p in status["providers"]] == counts
    dest = tmp_path / "out"
    enigma.ok("restore", backup_id, str(dest))
    assert snapshot(restored_root(dest, source)) == snapshot(source)


def test_help_and_version() -> None:
    runner = Enigma(Path("/nonexistent-config-dir"))
    out = runner.ok("--help").out
    for command in ("init", "backup", "restore", "verify", "list", "status", "config", "gc",
                    "encrypt-cred", "key", "plugins", "serve", "forget"):
        assert f"  {command}" in out, command
    assert "0.1.0" in runner.ok("--version").out
