"""End to end through the real `enigma` CLI with GCS (fake-gcs-server) as the only provider."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from enigma_storage_gcs.provider import GcsStorage
from helpers import Enigma, make_tree, manifest_objects, restored_root, snapshot
from servers.gcs import GcsServer

CONFIG = """\
[enigma]
key_provider = "local"
distribution = "RoundRobin"

[[providers]]
name = "gcs-dev"
type = "Gcs"
bucket = "{bucket}"
endpoint_url = "{endpoint}"
project = "{project}"
region = "us-east-1"
"""


def test_backup_restore_verify_gc_on_gcs(gcs: GcsServer, bucket_name: str,
                                         clean_env: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    enigma = Enigma(tmp_path / "config")
    enigma.config_dir.mkdir()
    (enigma.config_dir / "enigma.toml").write_text(CONFIG.format(
        bucket=bucket_name, endpoint=gcs.endpoint_url, project=gcs.project))

    init = enigma.ok("init")
    assert "provider 'gcs-dev' (gcs): created" in init.err
    assert bucket_name in gcs.bucket_names()
    assert "provider 'gcs-dev' (gcs): ready" in enigma.ok("init").err

    source = make_tree(tmp_path / "src", big_file_size=6 * 1024 * 1024)
    # The result is the last line (status lines precede it once a run takes over 1 s).
    backup = json.loads(enigma.ok("backup", "--json", str(source)).out.splitlines()[-1])
    assert backup["status"] == "complete"
    backup_id = backup["backup_id"]
    new_chunks = backup["stats"]["chunks_new"]
    assert new_chunks > 0

    inspect = GcsStorage(**gcs.provider_options(bucket_name))

    def stored_objects() -> set[str]:
        return {*inspect.list("chunks/"), *inspect.list("packs/")}

    expected, packs = manifest_objects(enigma.config_dir)
    assert stored_objects() == expected

    status = json.loads(enigma.ok("status", "--json").out)
    [row] = status["providers"]
    assert row["name"] == "gcs-dev" and row["type"] == "Gcs"
    assert row["reachable"] is True and row["error"] == ""
    assert row["chunks"] == new_chunks and row["bytes"] > 0

    verified = json.loads(enigma.ok("verify", "--json", backup_id).out)
    assert verified["ok"] is True and verified["chunks"] > 0

    dest = tmp_path / "restore"
    enigma.ok("restore", backup_id, str(dest))
    assert snapshot(restored_root(dest, source)) == snapshot(source)

    enigma.ok("forget", backup_id)
    gc = json.loads(enigma.ok("gc", "--json").out)
    assert (gc["chunks"], gc["packs"]) == (new_chunks, packs)
    assert stored_objects() == set()

    # A deleted bucket: status reports the provider unreachable with one clear line.
    for key in list(inspect.list()):
        inspect.delete(key)
    inspect.client.bucket(bucket_name).delete()
    status = json.loads(enigma.ok("status", "--json").out)
    [row] = status["providers"]
    assert row["reachable"] is False
    assert "bucket does not exist" in row["error"] and "\n" not in row["error"]
