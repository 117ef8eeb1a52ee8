"""Four clouds at once: S3 (SeaweedFS), Azure (Azurite), GCS (fake-gcs-server) and Local.

One repository spreads its chunks over all four real servers under RoundRobin and under
Weighted (2,1,1,1); `enigma status` shows the spread and reachability; restore, verify and
gc work across them. Needs the three storage plugins (CI installs every plugin).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Enigma, make_tree, restored_root, snapshot

pytest.importorskip("enigma_storage_s3", reason="needs plugins/storage-s3")
pytest.importorskip("enigma_storage_azure", reason="needs plugins/storage-azure")
pytest.importorskip("enigma_storage_gcs", reason="needs plugins/storage-gcs")

from servers.azurite import azurite_server
from servers.gcs import gcs_server
from servers.s3 import seaweedfs_server

from enigma.chunkstore import chunk_key
from enigma.manifest import ChunkRecord, Manifest
from enigma.packs import pack_key

SMALL_CDC = "[enigma.chunk_strategy.Cdc]\nmin_size = 16384\navg_size = 65536\nmax_size = 262144\n"


@pytest.fixture(scope="module")
def clouds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("clouds")
    with (seaweedfs_server(base / "weed") as s3, azurite_server(base / "azurite") as azure,
          gcs_server(base / "gcs") as gcs):
        yield {"s3": s3, "azure": azure, "gcs": gcs}


def toml_table(name: str, type_: str, options: dict[str, Any], weight: int) -> str:
    lines = ["[[providers]]", f'name = "{name}"', f'type = "{type_}"', f"weight = {weight}"]
    for key, value in options.items():
        text = str(value).lower() if isinstance(value, bool) else json.dumps(value)
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def four_provider_config(clouds: dict[str, Any], tmp_path: Path, tag: str, distribution: str,
                         weights: tuple[int, int, int, int]) -> str:
    bucket = f"enigma-{tag}"
    tables = [
        clouds["s3"].providers_toml("s3", bucket, weight=weights[0]),
        toml_table("azure", "Azure", clouds["azure"].provider_options(bucket), weights[1]),
        toml_table("gcs", "Gcs", clouds["gcs"].provider_options(bucket), weights[2]),
        toml_table("local", "Local", {"path": str(tmp_path / "local-store")}, weights[3]),
    ]
    return f'[enigma]\ndistribution = "{distribution}"\n{SMALL_CDC}\n' + "\n".join(tables)


@pytest.mark.parametrize(("distribution", "weights"), [
    ("RoundRobin", (1, 1, 1, 1)),
    ("Weighted", (2, 1, 1, 1)),
])
def test_four_providers_spread_restore_verify_gc(clouds: dict[str, Any], tmp_path: Path,
                                                 distribution: str,
                                                 weights: tuple[int, int, int, int]) -> None:
    enigma = Enigma(tmp_path / "config")
    enigma.config_dir.mkdir()
    tag = distribution.lower()
    (enigma.config_dir / "enigma.toml").write_text(
        four_provider_config(clouds, tmp_path, tag, distribution, weights))
    init = enigma.ok("init")
    for name in ("s3", "azure", "gcs", "local"):
        assert f"provider '{name}'" in init.err

    source = make_tree(tmp_path / "src")
    (source / "random.bin").write_bytes(random.Random(3).randbytes(3_000_000))
    # The last line: a run over a second prints status lines first (docs/json.md).
    backup = json.loads(enigma.ok("backup", "--json", str(source)).out.strip().splitlines()[-1])
    assert backup["status"] == "complete"

    status = json.loads(enigma.ok("status", "--json").out)
    rows = {row["name"]: row for row in status["providers"]}
    assert all(row["reachable"] for row in rows.values()), rows
    counts = [rows[name]["chunks"] for name in ("s3", "azure", "gcs", "local")]
    total = sum(counts)
    assert total == status["chunks"] > 40
    # Deterministic smooth (weighted) round-robin: each share is exact to within one cycle.
    for count, weight in zip(counts, weights, strict=True):
        assert abs(count - total * weight / sum(weights)) <= 1, (counts, weights)
    assert all(rows[name]["bytes"] > 0 for name in rows)
    table = enigma.ok("status").out
    assert table.count("reachable") == 4

    # The spread is real: each backend holds exactly the objects the manifest says, chunk
    # objects and packs (packs are on: a provider's small chunks share a few packs).
    with Manifest(enigma.config_dir / "manifest.db") as manifest:
        records = list(manifest.iter_chunks())
    assert len(records) == total and any(r.pack is not None for r in records)
    packs = {r.pack for r in records if r.pack is not None}
    assert local_objects(tmp_path) == objects_of(records, "local")
    assert s3_objects(clouds, tag) == objects_of(records, "s3")
    assert len(objects_of(records, "local")) < rows["local"]["chunks"]  # packed: fewer

    assert "all good" in enigma.ok("verify", backup["backup_id"]).out
    dest = tmp_path / "out"
    enigma.ok("restore", backup["backup_id"], str(dest))
    assert snapshot(restored_root(dest, source)) == snapshot(source)

    enigma.ok("forget", backup["backup_id"])
    gc = json.loads(enigma.ok("gc", "--json").out)
    assert (gc["chunks"], gc["packs"], gc["orphans"]) == (total, len(packs), 0)
    after = json.loads(enigma.ok("status", "--json").out)
    assert after["chunks"] == 0
    assert local_objects(tmp_path) == set() == s3_objects(clouds, tag)


def objects_of(records: list[ChunkRecord], provider: str) -> set[str]:
    """What ``provider`` should hold: chunk objects and packs."""
    return {chunk_key(r.id) if r.pack is None else pack_key(r.pack)
            for r in records if provider in r.providers}


def local_objects(tmp_path: Path) -> set[str]:
    store = tmp_path / "local-store"
    return {p.relative_to(store).as_posix() for prefix in ("chunks", "packs")
            for p in store.glob(f"{prefix}/*/*")}


def s3_objects(clouds: dict[str, Any], tag: str) -> set[str]:
    client = clouds["s3"].client()
    return {item["Key"] for prefix in ("chunks/", "packs/")
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=f"enigma-{tag}", Prefix=prefix)
            for item in page.get("Contents", [])}


def test_status_names_an_unreachable_cloud(clouds: dict[str, Any], tmp_path: Path) -> None:
    enigma = Enigma(tmp_path / "config")
    enigma.config_dir.mkdir()
    (enigma.config_dir / "enigma.toml").write_text(
        four_provider_config(clouds, tmp_path, "reach", "RoundRobin", (1, 1, 1, 1)))
    enigma.ok("init")
    config = enigma.config_dir / "enigma.toml"
    # Point GCS at a port where nothing listens: status still answers, naming it.
    gcs_url = clouds["gcs"].endpoint_url
    config.write_text(config.read_text().replace(gcs_url, "http://127.0.0.1:9"))
    status = json.loads(enigma.ok("status", "--json", env={"ENIGMA_RETRY_SECONDS": "1"}).out)
    rows = {row["name"]: row for row in status["providers"]}
    assert not rows["gcs"]["reachable"] and rows["gcs"]["error"]
    assert all(rows[name]["reachable"] for name in ("s3", "azure", "local"))
