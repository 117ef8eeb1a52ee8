"""Session-wide real S3 servers (moto and SeaweedFS) and helpers for the S3 plugin's tests.

The servers come from ``tests/servers/s3.py`` (shared with the multi-cloud end-to-end
tests); each starts once per session on free loopback ports and is stopped at the end.
Tests get fresh, uniquely named buckets, so they never see each other's objects.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.register_assert_rewrite("enigma.testing")

from enigma_storage_s3.storage import S3Storage  # noqa: E402
from servers.s3 import S3Server, moto_server, seaweedfs_server  # noqa: E402


def unique_bucket(tag: str) -> str:
    """A valid, unused bucket name (lowercase, <= 63 chars)."""
    return f"enigma-{tag}-{uuid.uuid4().hex[:16]}"


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with moto_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with seaweedfs_server(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def make_storage() -> Iterator[Callable[..., S3Storage]]:
    """Build ``S3Storage`` instances that are closed after the test."""
    made: list[S3Storage] = []

    def make(**options: Any) -> S3Storage:
        storage = S3Storage(**options)
        made.append(storage)
        return storage

    yield make
    for storage in made:
        storage.close()


@pytest.fixture
def bucket_name() -> Callable[[str], str]:
    """``unique_bucket`` as a fixture (test modules cannot import this conftest by name)."""
    return unique_bucket


@pytest.fixture
def fresh_bucket() -> Callable[[S3Server, str], str]:
    """Create a uniquely named bucket on a server and return its name."""

    def make(server: S3Server, tag: str = "t") -> str:
        return server.create_bucket(unique_bucket(tag))

    return make
