"""The real ``enigma`` command with each vault provider, as a user runs it.

The subprocesses find their credentials the way they would in production: Azure's
``DefaultAzureCredential`` picks up an App Service managed identity (the fake's token
endpoint), GCP's Application Default Credentials a service account key file, boto3 its
environment variables. No passphrase is given anywhere, and none may be asked for.
"""

from __future__ import annotations

import base64
import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import Enigma, assert_clean_error, make_tree, restored_root, snapshot
from kv_support import AWS_REGION, GCP_PROJECT, PROVIDERS, unique_prefix
from vault_fakes import FakeKeyVault, FakeSecretManager, free_port


def vault_options(kind: str, key_vault: FakeKeyVault, secret_manager: FakeSecretManager,
                  moto_url: str) -> dict[str, Any]:
    return {
        "azure-keyvault": {"vault_url": key_vault.url, "verify_challenge_resource": False},
        "gcp-secretmanager": {"gcp_project_id": GCP_PROJECT,
                              "endpoint_url": secret_manager.url},
        "aws-secretsmanager": {"aws_region": AWS_REGION, "endpoint_url": moto_url},
    }[kind]


def write_config(config_dir: Path, kind: str, options: dict[str, Any]) -> Enigma:
    """An enigma.toml selecting the vault provider; returns a runner with no passphrase."""
    lines = ["[enigma]", f'key_provider = "{kind}"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in options.items()]
    lines += ["", "[enigma.chunk_strategy.Cdc]", "min_size = 16384", "avg_size = 65536",
              "max_size = 262144", ""]
    config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (config_dir / "enigma.toml").write_text("\n".join(lines))
    return Enigma(config_dir, passphrase=None)


@pytest.fixture
def options(request: pytest.FixtureRequest, cloud_env: dict[str, str],
            key_vault: FakeKeyVault, secret_manager: FakeSecretManager,
            moto_url: str) -> dict[str, Any]:
    return {"secret_prefix": unique_prefix(),
            **vault_options(request.param, key_vault, secret_manager, moto_url)}


@pytest.mark.parametrize(("kind", "options"), [(k, k) for k in PROVIDERS],
                         indirect=["options"], ids=PROVIDERS)
def test_init_backup_rotate_backup_restore(kind: str, options: dict[str, Any], tmp_path: Path,
                                           make_provider: Any, key_vault: FakeKeyVault) -> None:
    enigma = write_config(tmp_path / "config", kind, options)
    outputs: list[str] = []
    challenges, logged = key_vault.challenges, len(key_vault.log)

    def run(*args: str) -> str:
        result = enigma.ok(*args)
        outputs.extend((result.out, result.err))
        assert "passphrase" not in result.err.lower(), result.err
        return result.out.strip()

    run("init")
    assert f"created keys with key provider '{kind}'" in outputs[-1]
    run("init")  # idempotent: the keys exist and load
    assert "key versions: [1]" in outputs[-1]

    source = make_tree(tmp_path / "src")
    before = snapshot(source)
    first = run("backup", str(source))

    assert "current key version 2" in run("key", "rotate")
    rng = random.Random(7)
    (source / "docs" / "after-rotation.bin").write_bytes(rng.randbytes(200_000))
    with open(source / "docs" / "readme.txt", "a") as out:
        out.write("changed after the rotation\n")
    after = snapshot(source)
    second = run("backup", str(source))
    assert first != second

    # Chunks sealed under key 1 (first backup) and key 2 (new data) both restore.
    for backup_id, expected in ((first, before), (second, after)):
        dest = tmp_path / f"restore-{backup_id}"
        run("restore", backup_id, str(dest))
        assert snapshot(restored_root(dest, source)) == expected
    run("verify", first)
    assert run("key", "list").splitlines() == ["1", "2  (current)"]

    # The keys are in the vault, and never in anything the command printed.
    keys = make_provider(kind, prefix=options["secret_prefix"]).load(None)
    secrets = [keys.id_key, keys.credential_key, *keys.data_keys.values()]
    printed = "\n".join(outputs)
    for key in secrets:
        assert base64.b64encode(key).decode() not in printed
        assert key.hex() not in printed
    assert not (tmp_path / "config" / "keystore.enc").exists()
    if kind == "azure-keyvault":
        # Each process met Key Vault's 401 challenge, then used a managed-identity token.
        assert key_vault.challenges - challenges >= 9
        assert any(path.startswith("/msi/token") and status == 200
                   for _, path, status, _ in key_vault.log[logged:])


@pytest.mark.parametrize(("kind", "options"), [(k, k) for k in PROVIDERS],
                         indirect=["options"], ids=PROVIDERS)
def test_missing_key_material_says_run_init(kind: str, options: dict[str, Any],
                                            tmp_path: Path) -> None:
    enigma = write_config(tmp_path / "config", kind, options)
    result = enigma("key", "list")
    assert_clean_error(result, kind, f"{options['secret_prefix']}key-index", "enigma init")


@pytest.mark.parametrize(("kind", "options"), [(k, k) for k in PROVIDERS],
                         indirect=["options"], ids=PROVIDERS)
def test_unreachable_vault_is_one_line(kind: str, options: dict[str, Any],
                                       tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    if kind == "azure-keyvault":
        options["vault_url"] = f"https://{dead}"
    else:
        options["endpoint_url"] = f"http://{dead}"
    enigma = write_config(tmp_path / "config", kind, options)
    start = time.monotonic()
    result = enigma("init")
    assert_clean_error(result, kind, "unreachable")
    assert time.monotonic() - start < 30


def test_unknown_option_names_the_line(cloud_env: dict[str, str], tmp_path: Path) -> None:
    enigma = write_config(tmp_path / "config", "aws-secretsmanager",
                          {"aws_region": AWS_REGION, "vault_url": "https://x"})
    assert_clean_error(enigma("key", "list"), "enigma.toml:4", "vault_url", "unknown option")
