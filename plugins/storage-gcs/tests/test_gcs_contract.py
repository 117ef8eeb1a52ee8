"""The core's storage contract against a real fake-gcs-server, one fresh bucket per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from enigma_storage_gcs.provider import GcsStorage
from servers.gcs import GcsServer

from enigma.testing import StorageProviderContract


class TestGcsContract(StorageProviderContract):
    """Listing pages at GCS's real maximum (1,000), so 1,100 keys take two pages."""

    @pytest.fixture
    def provider(self, gcs: GcsServer, bucket_name: str,
                 clean_env: pytest.MonkeyPatch) -> Iterator[GcsStorage]:
        storage = GcsStorage(**gcs.provider_options(bucket_name))
        assert storage.create_bucket() is True
        yield storage
        storage.close()


class TestGcsContractWithPrefix(StorageProviderContract):
    """Everything again with a key prefix inside a bucket shared with a neighbour."""

    listing_count = 1001
    large_object_size = 9 * 1024 * 1024  # two resumable-upload chunks

    @pytest.fixture
    def provider(self, gcs: GcsServer, bucket_name: str,
                 clean_env: pytest.MonkeyPatch) -> Iterator[GcsStorage]:
        storage = GcsStorage(**gcs.provider_options(bucket_name, prefix="repo/one"))
        storage.list_page_size = 300
        storage.create_bucket()
        GcsStorage(**gcs.provider_options(bucket_name, prefix="repo/two")).put(
            "meta/config", b"other repository")
        yield storage
        storage.close()
