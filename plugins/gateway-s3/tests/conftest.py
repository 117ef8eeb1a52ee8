"""Fixtures: one real ``enigma serve`` per session, boto3 clients, fresh buckets.

Tests use fresh bucket names, so they never see each other's objects.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from gateway_support import Gateway, start_gateway


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("gateway"))
    yield gw
    gw.process.stop()


@pytest.fixture
def s3(gateway: Gateway) -> Any:
    return gateway.client()


@pytest.fixture
def bucket(s3: Any) -> str:
    """A fresh, empty bucket."""
    name = f"t-{uuid.uuid4().hex[:20]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def new_bucket_name() -> Callable[[], str]:
    return lambda: f"t-{uuid.uuid4().hex[:20]}"
