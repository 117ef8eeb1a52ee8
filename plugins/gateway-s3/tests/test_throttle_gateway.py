"""Bandwidth limits of ``enigma serve``: ``[enigma] limit_upload`` / ``limit_download``
pace the gateway's backend traffic, in total across concurrent requests.

A real ``enigma serve`` (limits in its config, no command-line option) and boto3. The
server is up before the clock starts, so only the transfers are timed.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from gateway_support import Gateway, serve, write_gateway_config
from helpers import Enigma
from servers import free_port

KiB = 1024
MiB = 1024 * KiB
LIMIT_KIB = 1024
#: Two objects sent (and fetched) at once: the limit is the process's total, so both
#: together take what one of twice the size would.
OBJECT_SIZE = 3 * MiB // 2


@pytest.fixture(scope="module")
def limited_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("throttled-gateway")
    runner = Enigma(root / "config")
    runner.ok("init")
    config = runner.config_dir / "enigma.toml"
    config.write_text(config.read_text().replace(
        "[enigma]\n", f"[enigma]\nlimit_upload = {LIMIT_KIB}\nlimit_download = {LIMIT_KIB}\n",
        1))
    port = free_port()
    write_gateway_config(runner, port)
    gateway = serve(runner, root, port)
    try:
        yield gateway
    finally:
        gateway.process.stop()


def both_at_once(call: Callable[[str], Any], keys: list[str]) -> tuple[list[Any], float]:
    started = time.monotonic()
    with ThreadPoolExecutor(len(keys)) as pool:
        results = list(pool.map(call, keys))
    return results, time.monotonic() - started


def assert_rate(nbytes: int, seconds: float) -> None:
    rate = nbytes / seconds / KiB
    assert abs(rate - LIMIT_KIB) <= 0.10 * LIMIT_KIB, (
        f"{rate:.0f} KiB/s against a {LIMIT_KIB} KiB/s limit ({nbytes} B in {seconds:.2f} s)")


def test_put_and_get_keep_to_the_configured_limits(limited_gateway: Gateway) -> None:
    s3 = limited_gateway.client()
    bucket = f"t-{uuid.uuid4().hex[:20]}"
    s3.create_bucket(Bucket=bucket)
    bodies = {f"obj-{i}": os.urandom(OBJECT_SIZE) for i in range(2)}

    _, put_seconds = both_at_once(
        lambda key: s3.put_object(Bucket=bucket, Key=key, Body=bodies[key]), list(bodies))
    assert_rate(2 * OBJECT_SIZE, put_seconds)

    got, get_seconds = both_at_once(
        lambda key: s3.get_object(Bucket=bucket, Key=key)["Body"].read(), list(bodies))
    assert got == list(bodies.values())
    assert_rate(2 * OBJECT_SIZE, get_seconds)

    # Listing and HEAD move no object bytes: they are not held back.
    started = time.monotonic()
    assert s3.head_object(Bucket=bucket, Key="obj-0")["ContentLength"] == OBJECT_SIZE
    assert len(s3.list_objects_v2(Bucket=bucket)["Contents"]) == 2
    assert time.monotonic() - started < 1.0
