"""The core's storage contract against a real Azurite, one fresh container per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from enigma_storage_azure.provider import AzureStorage
from servers.azurite import AzuriteServer

from enigma.testing import StorageProviderContract


class TestAzureContract(StorageProviderContract):
    @pytest.fixture
    def provider(self, azurite: AzuriteServer, container_name: str,
                 clean_env: pytest.MonkeyPatch) -> Iterator[AzureStorage]:
        storage = AzureStorage(**azurite.provider_options(container_name))
        storage.list_page_size = 500  # 1,100 keys cross three pages
        assert storage.create_bucket() is True
        yield storage
        storage.close()


class TestAzureContractWithPrefix(StorageProviderContract):
    """Everything again with a key prefix inside a shared container."""

    listing_count = 1001  # past a 500-name page twice; the full suite runs above
    large_object_size = 9 * 1024 * 1024  # two blocks

    @pytest.fixture
    def provider(self, azurite: AzuriteServer, container_name: str,
                 clean_env: pytest.MonkeyPatch) -> Iterator[AzureStorage]:
        storage = AzureStorage(**azurite.provider_options(container_name, prefix="repo/one"))
        storage.list_page_size = 500
        storage.create_bucket()
        # A neighbour under another prefix must stay invisible.
        AzureStorage(**azurite.provider_options(container_name, prefix="repo/two")).put(
            "meta/config", b"other repository")
        yield storage
        storage.close()
