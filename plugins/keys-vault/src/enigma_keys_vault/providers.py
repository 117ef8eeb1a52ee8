"""The key provider classes this distribution registers (their SDKs load only when used)."""

from __future__ import annotations

from enigma.interfaces import KeyProvider
from enigma_keys_vault.aws import AwsSecretsManagerKeyProvider
from enigma_keys_vault.azure import AzureKeyVaultKeyProvider
from enigma_keys_vault.gcp import GcpSecretManagerKeyProvider

KEY_PROVIDERS: list[type[KeyProvider]] = [
    AzureKeyVaultKeyProvider,
    GcpSecretManagerKeyProvider,
    AwsSecretsManagerKeyProvider,
]

__all__ = [
    "KEY_PROVIDERS",
    "AwsSecretsManagerKeyProvider",
    "AzureKeyVaultKeyProvider",
    "GcpSecretManagerKeyProvider",
]
