"""The core's storage contract, run against two real S3 servers: moto and SeaweedFS."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from enigma_storage_s3.storage import S3Storage
from servers.s3 import S3Server

from enigma.testing import StorageProviderContract


class TestMotoContract(StorageProviderContract):
    @pytest.fixture
    def provider(self, moto: S3Server, fresh_bucket: Callable[..., str],
                 make_storage: Callable[..., S3Storage]) -> Iterator[S3Storage]:
        yield make_storage(**moto.provider_options(fresh_bucket(moto, "moto")))


class TestSeaweedContract(StorageProviderContract):
    @pytest.fixture
    def provider(self, seaweed: S3Server, fresh_bucket: Callable[..., str],
                 make_storage: Callable[..., S3Storage]) -> Iterator[S3Storage]:
        yield make_storage(**seaweed.provider_options(fresh_bucket(seaweed, "weed")))


class TestPrefixedContract(StorageProviderContract):
    """With a key prefix, a provider behaves the same and sees only its own objects.

    This one also sends botocore's default CRC32 checksums (``checksums =
    "when_supported"``, what AWS gets), which SeaweedFS verifies.
    """

    listing_count = 1001

    @pytest.fixture
    def provider(self, seaweed: S3Server, fresh_bucket: Callable[..., str],
                 make_storage: Callable[..., S3Storage]) -> Iterator[S3Storage]:
        bucket = fresh_bucket(seaweed, "prefix")
        neighbour = make_storage(**seaweed.provider_options(bucket, prefix="other"))
        neighbour.put("meta/config", b"someone else's")
        neighbour.put("chunks/aa/" + "a" * 64, b"someone else's")
        yield make_storage(**seaweed.provider_options(bucket, prefix="/enigma/repo1/",
                                                      checksums="when_supported"))
        assert set(neighbour.list()) == {"meta/config", "chunks/aa/" + "a" * 64}
