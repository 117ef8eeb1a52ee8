"""End to end through the real `enigma` CLI with Azure (Azurite) as the only provider."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import Enigma, make_tree, manifest_objects, restored_root, snapshot
from servers.azurite import ACCOUNT_KEY, AzuriteServer

CONFIG = """\
[enigma]
key_provider = "local"
distribution = "RoundRobin"

[[providers]]
name = "azure-dev"
type = "Azure"
bucket = "{container}"
endpoint_url = "{endpoint}"
access_key = "{account}"
secret_key = "{secret}"
region = "us-east-1"
"""


def test_backup_restore_verify_gc_on_azure(azurite: AzuriteServer, container_name: str,
                                           clean_env: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    enigma = Enigma(tmp_path / "config")
    enigma.ok("init")  # default config: creates the keystore that enc: tokens need
    token = enigma.ok("encrypt-cred", input=ACCOUNT_KEY + "\n").out.strip()
    assert token.startswith("enc:") and ACCOUNT_KEY not in token
    config = CONFIG.format(container=container_name, endpoint=azurite.endpoint_url,
                           account=azurite.account_name, secret=token)
    (enigma.config_dir / "enigma.toml").write_text(config)

    init = enigma.ok("init")
    assert "provider 'azure-dev' (azure): created" in init.err
    assert enigma.ok("init").err.count("provider 'azure-dev' (azure): ready") == 1

    source = make_tree(tmp_path / "src", big_file_size=6 * 1024 * 1024)
    # The result is the last line (status lines precede it once a run takes over 1 s).
    backup = json.loads(enigma.ok("backup", "--json", str(source)).out.splitlines()[-1])
    assert backup["status"] == "complete"
    backup_id = backup["backup_id"]
    new_chunks = backup["stats"]["chunks_new"]
    assert new_chunks > 0

    container = azurite.service_client().get_container_client(container_name)

    def stored_blobs() -> set[str]:
        return {n for n in container.list_blob_names() if n.startswith(("chunks/", "packs/"))}

    expected, packs = manifest_objects(enigma.config_dir)
    assert stored_blobs() == expected

    status = json.loads(enigma.ok("status", "--json").out)
    [row] = status["providers"]
    assert row["name"] == "azure-dev" and row["type"] == "Azure"
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
    assert stored_blobs() == set()

    # The secret never shows up in what enigma prints, and stays encrypted on disk.
    shown = enigma.ok("config", "--json").out + enigma.ok("status").out
    assert ACCOUNT_KEY not in shown
    assert ACCOUNT_KEY not in (enigma.config_dir / "enigma.toml").read_text()

    # A deleted container: status reports the provider unreachable with one clear line.
    container.delete_container()
    status = json.loads(enigma.ok("status", "--json").out)
    [row] = status["providers"]
    assert row["reachable"] is False
    assert "container does not exist" in row["error"] and "\n" not in row["error"]
