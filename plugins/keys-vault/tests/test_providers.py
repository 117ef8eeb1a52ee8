"""The vault providers in-process, through the real SDKs against the loopback fakes:
the secret layout, native versioning, the Key Vault challenge, and every error path."""

from __future__ import annotations

import base64
import json
import sys
import time
from typing import Any

import pytest
from enigma_keys_vault.aws import AwsSecretsManagerKeyProvider
from enigma_keys_vault.azure import AzureKeyVaultKeyProvider
from enigma_keys_vault.base import KeyIndex
from enigma_keys_vault.gcp import GcpSecretManagerKeyProvider, crc32c
from kv_support import AWS_REGION, GCP_PROJECT, PROVIDERS, reopen, unique_prefix
from vault_fakes import TENANT, FakeKeyVault, FakeSecretManager, free_port

from enigma.errors import AuthError, ConfigError, EnigmaError, IntegrityError, PluginError
from enigma.plugin_manager import PluginManager, construct


def assert_one_line(exc: BaseException, *fragments: str) -> None:
    text = str(exc)
    assert "\n" not in text and text.strip() == text, text
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"


# --------------------------------------------------------------------------- registration


@pytest.mark.parametrize("kind", PROVIDERS)
def test_registered_through_the_entry_point(kind: str) -> None:
    cls = PluginManager().get("key_provider", kind)
    assert cls.name == kind
    assert cls.needs_passphrase is False
    assert cls.__module__.startswith("enigma_keys_vault.")


def test_crc32c_matches_the_standard_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # RFC 3720 / iSCSI check value
    assert crc32c(b"") == 0


# --------------------------------------------------------------------------- layout


@pytest.mark.parametrize("kind", PROVIDERS)
def test_secret_layout_and_pinned_versions(kind: str, make_provider: Any) -> None:
    provider = make_provider(kind)
    prefix = provider.secret_prefix
    created = provider.create(None)
    rotated = provider.rotate(None)
    assert provider.secret_names() == [
        f"{prefix}id-key", f"{prefix}credential-key", f"{prefix}data-key-1",
        f"{prefix}data-key-2", f"{prefix}key-index"]

    index_text, _ = provider._read(f"{prefix}key-index", None)
    doc = json.loads(index_text)
    assert doc["format"] == 1 and doc["current_key_id"] == 2
    assert sorted(doc["data_keys"]) == ["1", "2"]
    index = KeyIndex.loads(index_text)
    # Every key is base64 of 32 bytes, at exactly the vault version the index pins.
    expected = {"id-key": (index.id_key, created.id_key),
                "credential-key": (index.credential_key, created.credential_key),
                "data-key-1": (index.data_keys[1], created.data_keys[1]),
                "data-key-2": (index.data_keys[2], rotated.data_keys[2])}
    for suffix, (version, key) in expected.items():
        value, got_version = provider._read(prefix + suffix, version)
        assert got_version == version
        assert base64.b64decode(value) == key
    # Key material never shows in a repr.
    assert created.data_keys[1].hex() not in repr(rotated)
    assert base64.b64encode(created.id_key).decode() not in repr(provider)


def index_versions(kind: str, provider: Any, key_vault: FakeKeyVault,
                   secret_manager: FakeSecretManager, moto_url: str) -> int:
    """How many versions of the key index the vault itself holds (native versioning)."""
    name = provider.index_name
    if kind == "azure-keyvault":
        return len(key_vault.secrets[name])
    if kind == "gcp-secretmanager":
        return len(secret_manager.projects[GCP_PROJECT][name].versions)
    import boto3

    client = boto3.client("secretsmanager", region_name=AWS_REGION, endpoint_url=moto_url)
    return len(client.list_secret_version_ids(SecretId=name)["Versions"])


@pytest.mark.parametrize("kind", PROVIDERS)
def test_rotation_adds_a_native_version_of_the_index(
        kind: str, make_provider: Any, key_vault: FakeKeyVault,
        secret_manager: FakeSecretManager, moto_url: str) -> None:
    provider = make_provider(kind)
    provider.create(None)
    for _ in range(3):
        provider.rotate(None)
    assert index_versions(kind, provider, key_vault, secret_manager, moto_url) == 4
    assert reopen(provider).versions(None) == [1, 2, 3, 4]


@pytest.mark.parametrize("kind", PROVIDERS)
def test_rotation_after_an_interrupted_rotation(kind: str, make_provider: Any) -> None:
    """A data key secret left by a rotation that died before the index update is not
    trusted: rotation writes a new version and pins that one."""
    provider = make_provider(kind)
    created = provider.create(None)
    stale = base64.b64encode(b"\x01" * 32).decode()
    provider._write(provider.data_key_name(2), stale)
    rotated = provider.rotate(None)
    assert rotated.current_key_id == 2
    assert rotated.data_keys[2] != b"\x01" * 32
    loaded = reopen(provider).load(None)
    assert loaded.data_keys == {1: created.data_keys[1], 2: rotated.data_keys[2]}


# --------------------------------------------------------------------------- Azure specifics


def test_azure_challenge_flow(make_provider: Any, key_vault: FakeKeyVault) -> None:
    """First request goes out without a token, gets the 401 challenge, and the SDK asks
    the credential for the challenge's resource and tenant, then retries with the token."""
    from azure.keyvault.secrets._shared import http_challenge_cache as ChallengeCache

    ChallengeCache.clear()
    provider = make_provider("azure-keyvault")
    before = len(key_vault.log)
    provider.create(None)
    first, second = key_vault.log[before], key_vault.log[before + 1]
    assert first[2] == 401 and not first[3], first
    assert second[3] and second[2] in (200, 404), second
    assert provider.credential.calls[0] == (("https://vault.azure.net/.default",), TENANT)
    # PUT bodies survive the bodiless challenge round trip.
    assert reopen(provider).load(None).data_keys


def test_azure_default_credential_chain(make_provider: Any, key_vault: FakeKeyVault) -> None:
    """With no credential set, DefaultAzureCredential finds the (fake) managed identity."""
    provider = make_provider("azure-keyvault")
    provider.credential = None
    provider.create(None)
    assert reopen(provider).exists()


def test_azure_lists_versions_through_the_sdk(make_provider: Any,
                                              key_vault: FakeKeyVault) -> None:
    """The fake's version listing (paged like the service) parses in the real SDK."""
    provider = make_provider("azure-keyvault")
    written = [provider._write(provider.index_name, f"v{n}") for n in range(27)]
    listed = [p.version for p in
              provider._secrets().list_properties_of_secret_versions(provider.index_name)]
    assert listed == written


def test_azure_access_denied(make_provider: Any, key_vault: FakeKeyVault) -> None:
    provider = make_provider("azure-keyvault")
    provider.exists()
    key_vault.deny = True
    try:
        with pytest.raises(AuthError) as info:
            reopen(provider).exists()
    finally:
        key_vault.deny = False
    assert_one_line(info.value, "azure-keyvault", "access denied", "Key Vault Secrets Officer")


def test_azure_rejected_token(make_provider: Any, key_vault: FakeKeyVault) -> None:
    provider = make_provider("azure-keyvault")
    provider.credential.token = "not-a-token-the-vault-accepts"
    with pytest.raises(AuthError) as info:
        provider.exists()
    assert_one_line(info.value, "azure-keyvault", "not authenticated", "az login")


def test_azure_managed_identity_refused(make_provider: Any,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDENTITY_HEADER", "wrong")
    provider = make_provider("azure-keyvault")
    provider.credential = None
    with pytest.raises(AuthError) as info:
        provider.exists()
    assert_one_line(info.value, "azure-keyvault", "not authenticated")


def test_azure_soft_deleted_secret(make_provider: Any, key_vault: FakeKeyVault) -> None:
    provider = make_provider("azure-keyvault")
    key_vault.soft_delete(provider.id_key_name)
    with pytest.raises(ConfigError) as info:
        provider.create(None)
    assert_one_line(info.value, provider.id_key_name, "recover or purge")


def test_azure_challenge_resource_is_verified_by_default(make_provider: Any) -> None:
    """The fake's challenge names vault.azure.net, which 127.0.0.1 is not under: the SDK's
    check refuses it unless verify_challenge_resource = false."""
    from azure.keyvault.secrets._shared import http_challenge_cache as ChallengeCache

    ChallengeCache.clear()
    provider = make_provider("azure-keyvault", verify_challenge_resource=True)
    with pytest.raises(ConfigError) as info:
        provider.exists()
    assert_one_line(info.value, "azure-keyvault", "does not match")


# --------------------------------------------------------------------------- GCP specifics


def test_gcp_lists_versions_through_the_sdk(make_provider: Any) -> None:
    provider = make_provider("gcp-secretmanager")
    provider.create(None)
    provider.rotate(None)
    client = provider._secrets()
    parent = f"projects/{GCP_PROJECT}/secrets/{provider.index_name}"
    versions = list(client.list_secret_versions(request={"parent": parent, "page_size": 1}))
    assert [v.name.rsplit("/", 1)[1] for v in versions] == ["2", "1"]
    assert all(v.state.name == "ENABLED" for v in versions)


def test_gcp_permission_denied(make_provider: Any) -> None:
    provider = make_provider("gcp-secretmanager", gcp_project_id="denied-project")
    with pytest.raises(AuthError) as info:
        provider.exists()
    assert_one_line(info.value, "gcp-secretmanager", "permission denied", "secretmanager")


def test_gcp_anonymous_is_refused(make_provider: Any) -> None:
    from google.auth.credentials import AnonymousCredentials

    provider = make_provider("gcp-secretmanager")
    provider.credentials = AnonymousCredentials()
    with pytest.raises(AuthError) as info:
        provider.exists()
    assert_one_line(info.value, "gcp-secretmanager", "not authenticated")


def test_gcp_without_credentials(make_provider: Any, monkeypatch: pytest.MonkeyPatch,
                                 tmp_path: Any) -> None:
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # no gcloud login either
    with pytest.raises(AuthError) as info:
        make_provider("gcp-secretmanager").exists()
    assert_one_line(info.value, "gcp-secretmanager", "no Google credentials",
                    "GOOGLE_APPLICATION_CREDENTIALS")


def test_gcp_finishes_a_secret_left_without_versions(make_provider: Any,
                                                     secret_manager: FakeSecretManager) -> None:
    """An init that died between creating a secret and adding its version is resumable."""
    provider = make_provider("gcp-secretmanager")
    provider._create_secret(provider.id_key_name)
    material = provider.create(None)
    assert reopen(provider).load(None).id_key == material.id_key


# --------------------------------------------------------------------------- AWS specifics


def test_aws_without_credentials(make_provider: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(AuthError) as info:
        make_provider("aws-secretsmanager").exists()
    assert_one_line(info.value, "aws-secretsmanager", "no usable AWS credentials")


# --------------------------------------------------------------------------- errors, all three

SDK_MODULES = {
    "azure-keyvault": ("azure.keyvault.secrets", "azure-keyvault needs the Azure SDK: "
                       "pip install 'enigma-keys-vault[azure]'"),
    "gcp-secretmanager": ("google.cloud.secretmanager",
                          "gcp-secretmanager needs the Google Cloud SDK: "
                          "pip install 'enigma-keys-vault[gcp]'"),
    "aws-secretsmanager": ("boto3", "aws-secretsmanager needs the AWS SDK (boto3): "
                           "pip install 'enigma-keys-vault[aws]'"),
}


@pytest.mark.parametrize("kind", PROVIDERS)
def test_missing_sdk(kind: str, make_provider: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    module, message = SDK_MODULES[kind]
    monkeypatch.setitem(sys.modules, module, None)  # what an uninstalled SDK looks like
    provider = make_provider(kind)
    for call in (provider.exists, lambda: provider.create(None), lambda: provider.load(None)):
        with pytest.raises(PluginError) as info:
            call()
        assert str(info.value) == message


@pytest.mark.parametrize("kind", PROVIDERS)
def test_unreachable_vault_fails_fast(kind: str, make_provider: Any) -> None:
    dead = f"127.0.0.1:{free_port()}"
    option = {"azure-keyvault": {"vault_url": f"https://{dead}"},
              "gcp-secretmanager": {"endpoint_url": f"http://{dead}"},
              "aws-secretsmanager": {"endpoint_url": f"http://{dead}"}}[kind]
    provider = make_provider(kind, **option)
    start = time.monotonic()
    with pytest.raises(EnigmaError) as info:
        provider.load(None)
    elapsed = time.monotonic() - start
    assert_one_line(info.value, kind, "unreachable")
    assert elapsed < 15, f"took {elapsed:.1f}s to give up"


@pytest.mark.parametrize("kind", PROVIDERS)
def test_missing_key_material_names_init(kind: str, make_provider: Any) -> None:
    provider = make_provider(kind)
    assert not provider.exists()
    for call in (provider.load, provider.rotate, provider.versions):
        with pytest.raises(ConfigError) as info:
            call(None)
        assert_one_line(info.value, kind, provider.index_name, "enigma init")


@pytest.mark.parametrize("kind", PROVIDERS)
def test_leftover_secret_blocks_create(kind: str, make_provider: Any) -> None:
    provider = make_provider(kind)
    provider._create(provider.credential_key_name, base64.b64encode(b"\0" * 32).decode())
    with pytest.raises(ConfigError) as info:
        provider.create(None)
    assert_one_line(info.value, provider.credential_key_name, "secret_prefix")
    assert not provider.exists()


BOGUS_VERSION = {"azure-keyvault": "0" * 32, "gcp-secretmanager": "999",
                 "aws-secretsmanager": "00000000-0000-4000-8000-000000000000"}


@pytest.mark.parametrize("kind", PROVIDERS)
def test_missing_pinned_version_is_an_integrity_error(kind: str, make_provider: Any) -> None:
    provider = make_provider(kind)
    provider.create(None)
    index = provider._index()
    index.data_keys[1] = BOGUS_VERSION[kind]
    provider._write(provider.index_name, index.dumps())
    with pytest.raises(IntegrityError) as info:
        reopen(provider).load(None)
    assert_one_line(info.value, provider.data_key_name(1), "missing", "recover")


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("damage", ["not json", '{"format": 9}', '{"format": 1}',
                                    '{"format": 1, "current_key_id": 3, "id_key": "a", '
                                    '"credential_key": "b", "data_keys": {"1": "c"}}'])
def test_damaged_index(kind: str, damage: str, make_provider: Any) -> None:
    provider = make_provider(kind)
    provider.create(None)
    provider._write(provider.index_name, damage)
    with pytest.raises(IntegrityError) as info:
        reopen(provider).load(None)
    assert_one_line(info.value, provider.index_name, "damaged")


@pytest.mark.parametrize("kind", PROVIDERS)
def test_a_key_that_is_not_32_bytes(kind: str, make_provider: Any) -> None:
    provider = make_provider(kind)
    provider.create(None)
    index = provider._index()
    index.id_key = provider._write(provider.id_key_name, "c2hvcnQ=")
    provider._write(provider.index_name, index.dumps())
    with pytest.raises(IntegrityError) as info:
        reopen(provider).load(None)
    assert_one_line(info.value, provider.id_key_name, "32-byte")


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(("cls", "options", "fragment"), [
    (AzureKeyVaultKeyProvider, {"vault_url": "http://x.vault.azure.net"}, "vault_url"),
    (AzureKeyVaultKeyProvider, {"vault_url": "https://x.vault.azure.net/secrets/a"}, "vault_url"),
    (AzureKeyVaultKeyProvider, {"vault_url": "https://x.vault.azure.net",
                                "secret_prefix": "bad_prefix"}, "secret_prefix"),
    (AzureKeyVaultKeyProvider, {"vault_url": "https://x.vault.azure.net",
                                "verify_challenge_resource": "no"}, "verify_challenge_resource"),
    (GcpSecretManagerKeyProvider, {"gcp_project_id": ""}, "gcp_project_id"),
    (GcpSecretManagerKeyProvider, {"gcp_project_id": "p", "secret_prefix": "a.b"},
     "secret_prefix"),
    (AwsSecretsManagerKeyProvider, {"aws_region": " "}, "aws_region"),
    (AwsSecretsManagerKeyProvider, {"aws_region": "eu-west-1", "secret_prefix": "x" * 600},
     "too long"),
    (AwsSecretsManagerKeyProvider, {}, "aws_region"),
    (GcpSecretManagerKeyProvider, {"gcp_project_id": "p", "vault_url": "https://x"},
     "unknown option"),
])
def test_bad_options_are_config_errors(cls: type, options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        construct(cls, {"config_dir": "/tmp", **options},
                  lambda key: f"enigma.toml:3: [enigma] '{key}'")
    assert_one_line(info.value, "enigma.toml:3", fragment)


def test_prefix_isolates_repositories(make_provider: Any) -> None:
    """Two prefixes in one vault are two independent key sets."""
    first = make_provider("aws-secretsmanager")
    second = make_provider("aws-secretsmanager", prefix=unique_prefix())
    a, b = first.create(None), second.create(None)
    assert a.id_key != b.id_key
    assert reopen(first).load(None).id_key == a.id_key
