"""Fixtures: the loopback fakes, a moto server, and a hermetic environment for the SDKs.

Nothing here talks to a real cloud: every endpoint is on 127.0.0.1, and ``cloud_env``
clears the variables that could send an SDK elsewhere (profiles, metadata servers).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("enigma.testing")
sys.path.insert(0, str(Path(__file__).parent))

from enigma_keys_vault.aws import AwsSecretsManagerKeyProvider  # noqa: E402
from enigma_keys_vault.azure import AzureKeyVaultKeyProvider  # noqa: E402
from enigma_keys_vault.gcp import GcpSecretManagerKeyProvider  # noqa: E402
from kv_support import AWS_REGION, CLEARED_PREFIXES, GCP_PROJECT, unique_prefix  # noqa: E402
from vault_fakes import (  # noqa: E402
    FakeAzureCredential,
    FakeKeyVault,
    FakeSecretManager,
    TlsFiles,
    make_tls,
    moto_server,
    service_account_file,
)


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def key_vault(tls: TlsFiles) -> Iterator[FakeKeyVault]:
    server = FakeKeyVault(tls)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def secret_manager() -> Iterator[FakeSecretManager]:
    server = FakeSecretManager()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture(scope="session")
def service_account(tmp_path_factory: pytest.TempPathFactory,
                    secret_manager: FakeSecretManager) -> Path:
    return service_account_file(tmp_path_factory.mktemp("gcp") / "sa.json",
                                f"{secret_manager.url}/token", GCP_PROJECT)


@pytest.fixture
def cloud_env(monkeypatch: pytest.MonkeyPatch, tls: TlsFiles, key_vault: FakeKeyVault,
              service_account: Path) -> dict[str, str]:
    """Point every SDK's default credential chain at the fakes, for this test (and the
    ``enigma`` subprocesses it starts, which inherit ``os.environ``)."""
    for name in list(os.environ):
        if name.startswith(CLEARED_PREFIXES):
            monkeypatch.delenv(name)
    env = {
        # Azure: App Service managed identity -> the fake's token endpoint; trust its CA.
        "IDENTITY_ENDPOINT": f"{key_vault.url}/msi/token",
        "IDENTITY_HEADER": key_vault.identity_header,
        "REQUESTS_CA_BUNDLE": str(tls.ca),
        # GCP: a service account key file; never probe the GCE metadata server.
        "GOOGLE_APPLICATION_CREDENTIALS": str(service_account),
        "NO_GCE_CHECK": "True",
        # AWS: static dummy credentials; never probe instance metadata.
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


ProviderFactory = Callable[..., Any]


@pytest.fixture
def make_provider(cloud_env: dict[str, str], key_vault: FakeKeyVault,
                  secret_manager: FakeSecretManager, moto_url: str) -> ProviderFactory:
    """``make_provider(kind, prefix=None, **options)`` -> a provider wired to its fake."""

    def make(kind: str, prefix: str | None = None, **options: Any) -> Any:
        prefix = prefix or unique_prefix()
        if kind == "azure-keyvault":
            provider = AzureKeyVaultKeyProvider(
                **{"vault_url": key_vault.url, "secret_prefix": prefix, "config_dir": "/nowhere",
                   "verify_challenge_resource": False, **options})
            provider.credential = FakeAzureCredential(key_vault)
            return provider
        if kind == "gcp-secretmanager":
            return GcpSecretManagerKeyProvider(
                **{"gcp_project_id": GCP_PROJECT, "secret_prefix": prefix,
                   "config_dir": "/nowhere", "endpoint_url": secret_manager.url, **options})
        if kind == "aws-secretsmanager":
            return AwsSecretsManagerKeyProvider(
                **{"aws_region": AWS_REGION, "secret_prefix": prefix, "config_dir": "/nowhere",
                   "endpoint_url": moto_url, **options})
        raise AssertionError(kind)

    return make
