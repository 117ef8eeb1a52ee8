"""The key provider contract against the real services; each cloud runs only when asked.

    AZURE_KEYVAULT_URL=https://<vault>.vault.azure.net   (+ any DefaultAzureCredential login)
    GCP_PROJECT_ID=<project>                              (+ Application Default Credentials)
    AWS_REGION=<region>                                   (+ AWS_ACCESS_KEY_ID/..., or AWS_PROFILE)

Every test uses a fresh ``enigma-test-<random>-`` prefix and deletes its secrets afterwards
(Key Vault: delete, then purge when the identity may).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest
from enigma_keys_vault.aws import AwsSecretsManagerKeyProvider
from enigma_keys_vault.azure import AzureKeyVaultKeyProvider
from enigma_keys_vault.base import VaultKeyProvider
from enigma_keys_vault.gcp import GcpSecretManagerKeyProvider

from enigma.interfaces import KeyProvider
from enigma.testing import KeyProviderContract

AZURE_URL = os.environ.get("AZURE_KEYVAULT_URL", "")
GCP_PROJECT = os.environ.get("GCP_PROJECT_ID", "")
AWS_REGION = os.environ.get("AWS_REGION", "")
AWS_CREDENTIALS = any(os.environ.get(name) for name in (
    "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"))


def _candidates(provider: VaultKeyProvider) -> list[str]:
    """Every secret a test may have left, even if it failed before writing the index."""
    try:
        return provider.secret_names()
    except Exception:
        return [provider.id_key_name, provider.credential_key_name, provider.index_name,
                *(provider.data_key_name(n) for n in range(1, 6))]


def _delete_azure(provider: Any) -> None:
    client = provider._secrets()
    for name in _candidates(provider):
        with contextlib.suppress(Exception):
            client.begin_delete_secret(name).wait()
        with contextlib.suppress(Exception):
            client.purge_deleted_secret(name)


def _delete_gcp(provider: Any) -> None:
    client = provider._secrets()
    for name in _candidates(provider):
        with contextlib.suppress(Exception):
            client.delete_secret(name=provider._path(name))


def _delete_aws(provider: Any) -> None:
    client = provider._secrets()
    for name in _candidates(provider):
        with contextlib.suppress(Exception):
            client.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)


class _RealCloud(KeyProviderContract):
    def new(self, prefix: str) -> VaultKeyProvider:
        raise NotImplementedError

    def cleanup(self, provider: Any) -> None:
        raise NotImplementedError

    @pytest.fixture
    def key_provider(self) -> Iterator[KeyProvider]:
        provider = self.new(f"enigma-test-{os.urandom(5).hex()}-")
        try:
            yield provider
        finally:
            self.cleanup(self.new(provider.secret_prefix))

    def reopen(self, key_provider: KeyProvider) -> KeyProvider:
        assert isinstance(key_provider, VaultKeyProvider)
        return self.new(key_provider.secret_prefix)

    def test_wrong_passphrase_is_refused(self, key_provider: KeyProvider) -> None:
        created = key_provider.create(None)
        assert self.reopen(key_provider).load("ignored").data_keys == created.data_keys


@pytest.mark.skipif(not AZURE_URL, reason="set AZURE_KEYVAULT_URL to test real Azure Key Vault")
class TestRealAzureKeyVault(_RealCloud):
    def new(self, prefix: str) -> VaultKeyProvider:
        return AzureKeyVaultKeyProvider(vault_url=AZURE_URL, secret_prefix=prefix)

    def cleanup(self, provider: Any) -> None:
        _delete_azure(provider)


@pytest.mark.skipif(not GCP_PROJECT, reason="set GCP_PROJECT_ID to test real GCP Secret Manager")
class TestRealGcpSecretManager(_RealCloud):
    def new(self, prefix: str) -> VaultKeyProvider:
        return GcpSecretManagerKeyProvider(gcp_project_id=GCP_PROJECT, secret_prefix=prefix)

    def cleanup(self, provider: Any) -> None:
        _delete_gcp(provider)


@pytest.mark.skipif(not (AWS_REGION and AWS_CREDENTIALS),
                    reason="set AWS_REGION and AWS credentials to test real AWS Secrets Manager")
class TestRealAwsSecretsManager(_RealCloud):
    def new(self, prefix: str) -> VaultKeyProvider:
        return AwsSecretsManagerKeyProvider(aws_region=AWS_REGION, secret_prefix=prefix)

    def cleanup(self, provider: Any) -> None:
        _delete_aws(provider)
