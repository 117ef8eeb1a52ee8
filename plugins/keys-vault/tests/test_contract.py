"""Each vault provider passes the core's ``KeyProviderContract`` against its loopback fake."""

from __future__ import annotations

from typing import Any

import pytest
from kv_support import reopen

from enigma.interfaces import KeyProvider
from enigma.testing import KeyProviderContract


class _VaultContract(KeyProviderContract):
    kind = ""

    @pytest.fixture
    def key_provider(self, make_provider: Any) -> KeyProvider:
        return make_provider(self.kind)

    def reopen(self, key_provider: KeyProvider) -> KeyProvider:
        return reopen(key_provider)

    def test_wrong_passphrase_is_refused(self, key_provider: KeyProvider) -> None:
        """Replaces the contract's skip: the vault's access control is the lock, so a
        passphrase, if one is passed anyway, changes nothing."""
        assert not key_provider.needs_passphrase
        created = key_provider.create("ignored")
        loaded = self.reopen(key_provider).load("something else")
        assert loaded.data_keys == created.data_keys
        assert loaded.id_key == created.id_key


class TestAzureKeyVaultContract(_VaultContract):
    kind = "azure-keyvault"


class TestGcpSecretManagerContract(_VaultContract):
    kind = "gcp-secretmanager"


class TestAwsSecretsManagerContract(_VaultContract):
    kind = "aws-secretsmanager"
