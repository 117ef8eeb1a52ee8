"""``metrics_addr``: Prometheus metrics of a real ``enigma serve``, scraped over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from enigma_gateway_s3.metrics import RepositoryCollector, operation
from gateway_support import Gateway, error_of, serve, start_gateway, write_gateway_config
from helpers import Enigma, assert_clean_error
from servers import free_port

from enigma.manifest import BucketRecord, Manifest, ObjectRecord

SIZES = (1_000, 70_000, 300_000)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics`` as {(name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def by_label(samples: dict, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    """Samples of one metric keyed by the values of ``keys``."""
    return {tuple(dict(labels)[k] for k in keys): value
            for (n, labels), value in samples.items() if n == name}


def test_metrics_count_a_known_sequence(tmp_path: Path) -> None:
    port = free_port()
    gateway = start_gateway(tmp_path, extra=f'metrics_addr = "127.0.0.1:{port}"\n')
    try:
        s3: Any = gateway.client()
        s3.create_bucket(Bucket="metrics")
        bodies = [os.urandom(size) for size in SIZES]
        for number, body in enumerate(bodies):
            s3.put_object(Bucket="metrics", Key=f"k{number}", Body=body)
        for number in (0, 2):
            assert s3.get_object(Bucket="metrics", Key=f"k{number}")["Body"].read() == \
                bodies[number]
        assert error_of(lambda: s3.get_object(Bucket="metrics", Key="missing"))[:2] == \
            ("NoSuchKey", 404)
        samples = scrape(port)
        process = gateway.process.process
        assert process is not None
        process.send_signal(signal.SIGTERM)  # the metrics thread must not hold up the exit
        assert process.wait(timeout=15) == 0
        assert "Traceback" not in (tmp_path / "serve.log").read_text()
    finally:
        gateway.process.stop()

    requests = by_label(samples, "enigma_s3_requests_total", "operation", "code")
    assert requests == {("CreateBucket", "200"): 1, ("PutObject", "200"): 3,
                        ("GetObject", "200"): 2, ("GetObject", "404"): 1}
    counts = by_label(samples, "enigma_s3_request_duration_seconds_count", "operation")
    assert counts == {("CreateBucket",): 1, ("PutObject",): 3, ("GetObject",): 3}
    buckets = by_label(samples, "enigma_s3_request_duration_seconds_bucket", "operation", "le")
    assert buckets["PutObject", "+Inf"] == 3
    assert buckets["GetObject", "300.0"] == 3
    assert samples["enigma_s3_request_duration_seconds_sum", (("operation", "PutObject"),)] > 0
    received = samples["enigma_s3_received_bytes_total", ()]
    sent = samples["enigma_s3_sent_bytes_total", ()]
    assert sum(SIZES) <= received < sum(SIZES) + 64 * 1024  # aws-chunked framing at most
    assert SIZES[0] + SIZES[2] < sent < SIZES[0] + SIZES[2] + 4096  # + small XML bodies
    assert samples["enigma_s3_requests_in_flight", ()] == 0
    assert samples["enigma_s3_buckets", ()] == 1
    assert samples["enigma_s3_objects", ()] == 3
    assert samples["enigma_s3_object_bytes", ()] == sum(SIZES)
    assert samples["enigma_repository_chunks", ()] >= 3
    assert samples["enigma_repository_chunk_bytes", ()] == sum(SIZES)  # random: no dedup
    assert samples["enigma_repository_stored_bytes", ()] > sum(SIZES)  # sealing overhead
    assert samples["process_resident_memory_bytes", ()] > 0


def start_faulty_gateway(root: Path, metrics_port: int) -> tuple[Gateway, Path]:
    """A gateway over one ``Faulty`` provider (half of chunk PUTs fail transiently, each
    fault journalled) with compression on; returns it and the fault journal."""
    runner = Enigma(root / "config")
    journal = root / "faults.log"
    runner.config_dir.mkdir(parents=True)
    (runner.config_dir / "enigma.toml").write_text(
        '[enigma]\n[enigma.compression]\nenabled = true\n\n[[providers]]\nname = "flaky"\n'
        f'type = "Faulty"\npath = "{root / "store"}"\nseed = 3\nput_error = 0.5\n'
        f'journal = "{journal}"\n')
    runner.ok("init")
    port = free_port()
    write_gateway_config(runner, port, f'metrics_addr = "127.0.0.1:{metrics_port}"\n')
    return serve(runner, root, port, retry_seconds="30"), journal


def test_pipeline_counters_move_by_the_right_amounts(tmp_path: Path) -> None:
    """Chunks written and deduplicated, their bytes, the compression ratio and backend
    errors/retries by provider, after real S3 traffic through a real gateway."""
    port = free_port()
    gateway, journal = start_faulty_gateway(tmp_path, port)
    try:
        s3: Any = gateway.client()
        s3.create_bucket(Bucket="counted")
        # One chunk each (< min chunk size). The fault dice depend on the chunk ids, which
        # depend on this repository's random id key: 24 chunk PUTs at 50 % make "no fault
        # at all" a one-in-16-million event.
        randoms = [os.urandom(size) for size in (*SIZES, *range(1000, 1020))]
        text = b"".join(b"line %06d of a very compressible log file\n" % i
                        for i in range(5000))
        for number, body in enumerate([*randoms, text]):
            s3.put_object(Bucket="counted", Key=f"k{number}", Body=body)
        before_copy = scrape(port)
        s3.put_object(Bucket="counted", Key="copy", Body=randoms[2])  # all deduplicated
        s3.put_object(Bucket="counted", Key="copy2", Body=text)
        samples = scrape(port)
    finally:
        gateway.process.stop()

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    written_plain = sum(len(r) for r in randoms) + len(text)
    assert value("enigma_chunks_written_total") == len(randoms) + 1
    assert value("enigma_chunk_written_plain_bytes_total") == written_plain
    assert before_copy[("enigma_chunks_deduplicated_total", ())] == 0
    assert value("enigma_chunks_deduplicated_total") == 2
    assert value("enigma_chunk_deduplicated_bytes_total") == SIZES[2] + len(text)
    # Only the gateway wrote chunks, so what it counted is what the manifest holds.
    stored = value("enigma_chunk_written_stored_bytes_total")
    assert stored == value("enigma_repository_stored_bytes")
    assert value("enigma_compression_ratio") == pytest.approx(written_plain / stored)
    assert value("enigma_compression_ratio") > 1.5  # the text compressed well
    assert value("enigma_repository_compression_ratio") == pytest.approx(
        value("enigma_repository_chunk_bytes") / stored)
    # Every injected fault was one transient error and one retry on provider "flaky".
    assert journal.exists(), "no put fault was injected"
    faults = [line for line in journal.read_text().splitlines()
              if line.startswith("transient put chunks/")]
    assert value("enigma_backend_errors_total", provider="flaky", kind="transient") == \
        len(faults)
    assert value("enigma_backend_retries_total", provider="flaky") == len(faults)
    assert value("enigma_backend_errors_total", provider="flaky", kind="permanent") == 0


def test_repository_totals_are_cached(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path / "m.db")
    try:
        manifest.create_bucket(BucketRecord("b", "owner", 0.0, "us-east-1"))
        cached = RepositoryCollector(manifest, str(tmp_path / "m.db"), ttl=60)
        fresh = RepositoryCollector(manifest, str(tmp_path / "m.db"), ttl=0)
        assert cached.stats()["objects"] == fresh.stats()["objects"] == 0
        manifest.put_object(ObjectRecord(bucket="b", key="k", size=0, etag="e",
                                         created_at=time.time(), content_type="",
                                         metadata={}, chunks=[]))
        assert cached.stats()["objects"] == 0
        assert fresh.stats() == {"buckets": 1, "objects": 1, "object_bytes": 0, "chunks": 0,
                                 "chunk_bytes": 0, "stored_bytes": 0}
    finally:
        manifest.close()


def test_bad_metrics_addr_is_one_line(tmp_path: Path) -> None:
    runner = Enigma(tmp_path / "c")
    runner.ok("init")
    write_gateway_config(runner, free_port(), 'metrics_addr = "9100"\n')
    config = runner.config_dir / "enigma.toml"
    text = config.read_text()
    assert_clean_error(runner("serve", timeout=60), "metrics_addr", "HOST:PORT")
    config.write_text(text.replace('"9100"', "9100"))
    assert_clean_error(runner("serve", timeout=60), "metrics_addr", "must be a string")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config.write_text(text.replace('"9100"', f'"127.0.0.1:{taken.getsockname()[1]}"'))
        assert_clean_error(runner("serve", timeout=60), "metrics_addr", "cannot listen")


@pytest.mark.parametrize(("method", "path", "query", "extra", "expected"), [
    ("GET", "/", "", {}, "ListBuckets"),
    ("PUT", "/b", "", {}, "CreateBucket"),
    ("PUT", "/b/", "", {}, "CreateBucket"),
    ("HEAD", "/b", "", {}, "HeadBucket"),
    ("DELETE", "/b", "", {}, "DeleteBucket"),
    ("GET", "/b", "list-type=2&prefix=a", {}, "ListObjectsV2"),
    ("GET", "/b", "prefix=a&marker=x", {}, "ListObjects"),
    ("GET", "/b", "location", {}, "GetBucketLocation"),
    ("GET", "/b", "versioning", {}, "GetBucketVersioning"),
    ("PUT", "/b", "versioning", {}, "PutBucketVersioning"),
    ("GET", "/b", "uploads", {}, "ListMultipartUploads"),
    ("GET", "/b", "versions", {}, "ListObjectVersions"),
    ("POST", "/b", "delete", {}, "DeleteObjects"),
    ("PUT", "/b/a/key", "", {}, "PutObject"),
    ("PUT", "/b/a/key", "", {"copy": True}, "CopyObject"),
    ("GET", "/b/a/key", "versionId=null", {}, "GetObject"),
    ("HEAD", "/b/key", "", {}, "HeadObject"),
    ("DELETE", "/b/key", "", {}, "DeleteObject"),
    ("POST", "/b/key", "uploads", {}, "CreateMultipartUpload"),
    ("PUT", "/b/key", "partNumber=1&uploadId=x", {}, "UploadPart"),
    ("PUT", "/b/key", "partNumber=1&uploadId=x", {"copy": True}, "UploadPartCopy"),
    ("POST", "/b/key", "uploadId=x", {}, "CompleteMultipartUpload"),
    ("DELETE", "/b/key", "uploadId=x", {}, "AbortMultipartUpload"),
    ("GET", "/b/key", "uploadId=x", {}, "ListParts"),
    ("GET", "/b/key", "tagging", {}, "GetObjectTagging"),
    ("PUT", "/b/key", "acl", {}, "PutObjectAcl"),
    ("GET", "/", "", {"vhost": True}, "ListObjects"),
    ("GET", "/", "list-type=2", {"vhost": True}, "ListObjectsV2"),
    ("PUT", "/dir/key", "", {"vhost": True}, "PutObject"),
    ("PATCH", "/b/key", "", {}, "Unknown"),
    ("POST", "/", "", {}, "Unknown"),
])
def test_operation_names(method: str, path: str, query: str, extra: dict[str, bool],
                         expected: str) -> None:
    assert operation(method, path, query, **extra) == expected
