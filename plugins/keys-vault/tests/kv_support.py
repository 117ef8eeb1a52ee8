"""Shared test helpers (a plain module: test files import it, conftest.py provides fixtures)."""

from __future__ import annotations

import uuid
from typing import Any

from enigma_keys_vault.aws import AwsSecretsManagerKeyProvider
from enigma_keys_vault.azure import AzureKeyVaultKeyProvider
from enigma_keys_vault.gcp import GcpSecretManagerKeyProvider

PROVIDERS = ["azure-keyvault", "gcp-secretmanager", "aws-secretsmanager"]
GCP_PROJECT = "enigma-test"
AWS_REGION = "eu-west-1"
#: Variables that would point an SDK at real credentials or a real metadata server.
CLEARED_PREFIXES = ("AZURE_", "AWS_", "GOOGLE_", "GCLOUD_", "CLOUDSDK_", "MSI_", "IDENTITY_",
                    "IMDS_", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")


def unique_prefix() -> str:
    """A fresh secret prefix, so tests sharing one fake never see each other's secrets."""
    return f"t{uuid.uuid4().hex[:12]}-"


def reopen(provider: Any) -> Any:
    """A new instance over the same secrets (no cached client or state)."""
    if isinstance(provider, AzureKeyVaultKeyProvider):
        fresh = AzureKeyVaultKeyProvider(
            vault_url=provider.vault_url, secret_prefix=provider.secret_prefix,
            verify_challenge_resource=provider.verify_challenge_resource)
        fresh.credential = provider.credential
        return fresh
    if isinstance(provider, GcpSecretManagerKeyProvider):
        fresh_gcp = GcpSecretManagerKeyProvider(
            gcp_project_id=provider.project, secret_prefix=provider.secret_prefix,
            endpoint_url=provider.endpoint_url)
        fresh_gcp.credentials = provider.credentials
        return fresh_gcp
    return AwsSecretsManagerKeyProvider(
        aws_region=provider.region, secret_prefix=provider.secret_prefix,
        endpoint_url=provider.endpoint_url)
