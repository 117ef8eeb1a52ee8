"""Prometheus metrics for ``[s3_proxy] metrics_addr``: an ASGI wrapper that counts requests,
and a collector that reads repository totals from the manifest at scrape time.

The wrapper sits outside ``S3App`` (``server.py`` applies it only when ``metrics_addr`` is
set), so a gateway without metrics pays nothing, and the app needs no metrics code. Its
work per request runs on the event loop and is a few counter increments: no lock is held
across I/O. ``/metrics`` is served by prometheus_client's wsgiref server on its own thread,
from a private registry.
"""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from enigma.errors import ConfigError
from enigma.telemetry import TELEMETRY, TelemetrySnapshot
from enigma_gateway_s3.multipart import UPLOADS

log = logging.getLogger("enigma_gateway_s3")

#: Request durations: from a HEAD (~1 ms) to a multi-GiB PUT or GET (minutes).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0, 300.0)
#: Repository totals are recomputed at most this often (chunk_totals scans the chunk
#: table: about 60 ms per million chunks), however often and concurrently Prometheus scrapes.
STATS_TTL = 5.0

#: Sub-resource -> the name part S3 uses for it (GetBucket<part>, PutObject<part>, ...).
_VERBS = {"GET": "Get", "PUT": "Put", "DELETE": "Delete"}
_BUCKET_SUB = {
    "accelerate": "AccelerateConfiguration", "acl": "Acl", "cors": "Cors",
    "analytics": "AnalyticsConfiguration", "encryption": "Encryption",
    "intelligent-tiering": "IntelligentTieringConfiguration",
    "inventory": "InventoryConfiguration", "lifecycle": "LifecycleConfiguration",
    "location": "Location", "logging": "Logging", "metrics": "MetricsConfiguration",
    "notification": "NotificationConfiguration", "object-lock": "ObjectLockConfiguration",
    "ownershipControls": "OwnershipControls", "policy": "Policy", "policyStatus": "PolicyStatus",
    "publicAccessBlock": "PublicAccessBlock", "replication": "Replication",
    "requestPayment": "RequestPayment", "tagging": "Tagging", "versioning": "Versioning",
    "website": "Website"}
_OBJECT_SUB = {"acl": "Acl", "attributes": "Attributes", "legal-hold": "LegalHold",
               "retention": "Retention", "tagging": "Tagging", "torrent": "Torrent"}


def operation(method: str, path: str, query: str = "", *, vhost: bool = False,
              copy: bool = False) -> str:
    """The S3 operation name of a request, from its shape alone (a bounded label set).

    ``path`` is the decoded path, ``query`` the raw query string, ``vhost`` whether the Host
    header named the bucket (``<bucket>.<domain>``), ``copy`` whether an
    ``x-amz-copy-source`` header came. Anything unrecognised is "Unknown".
    """
    params = dict(p.partition("=")[::2] for p in query.split("&")) if query else {}
    if vhost:
        bucket, key = "-", path[1:] if path.startswith("/") else path
    else:
        bucket, _, key = path.lstrip("/").partition("/")
    if not bucket:
        return "ListBuckets" if method == "GET" else "Unknown"
    if not key:
        return _bucket_operation(method, params)
    return _object_operation(method, params, copy)



def _bucket_operation(method: str, params: dict[str, str]) -> str:
    if method == "HEAD":
        return "HeadBucket"
    if method == "POST":
        return "DeleteObjects" if "delete" in params else "Unknown"
    if method == "GET":
        if "uploads" in params:
            return "ListMultipartUploads"
        if "versions" in params:
            return "ListObjectVersions"
    sub = _sub_resource_operation(method, params, "Bucket", _BUCKET_SUB)
    if sub is not None:
        return sub
    if method == "GET":
        return "ListObjectsV2" if params.get("list-type") == "2" else "ListObjects"
    return "CreateBucket" if method == "PUT" else "DeleteBucket"


def _object_operation(method: str, params: dict[str, str], copy: bool) -> str:
    upload = "uploadId" in params
    if method == "POST":
        if "uploads" in params:
            return "CreateMultipartUpload"
        if upload:
            return "CompleteMultipartUpload"
        if "restore" in params:
            return "RestoreObject"
        return "SelectObjectContent" if "select" in params else "Unknown"
    if method == "HEAD":
        return "HeadObject"
    if method == "GET" and upload:
        return "ListParts"
    if method == "PUT" and upload and "partNumber" in params:
        return "UploadPartCopy" if copy else "UploadPart"
    if method == "DELETE" and upload:
        return "AbortMultipartUpload"
    sub = _sub_resource_operation(method, params, "Object", _OBJECT_SUB)
    if sub is not None:
        return sub
    if method == "PUT":
        return "CopyObject" if copy else "PutObject"
    return "GetObject" if method == "GET" else "DeleteObject"


def _sub_resource_operation(method: str, params: dict[str, str], kind: str,
                            subresources: dict[str, str]) -> str | None:
    """``<Verb><Kind><Sub>`` (GetObjectTagging, PutBucketAcl, ...), "Unknown" for a method
    with no verb, None when no sub-resource is named."""
    verb = _VERBS.get(method)
    if verb is None:
        return "Unknown"
    for name, part in subresources.items():
        if name in params:
            return f"{verb}{kind}{part}"
    return None


class GatewayMetrics:
    """The request metrics, and an ASGI wrapper that feeds them."""

    def __init__(self, registry: CollectorRegistry, domains: tuple[str, ...] = ()) -> None:
        self.domains = domains
        self.requests = Counter("enigma_s3_requests", "S3 requests answered, by operation and "
                                "HTTP status code", ["operation", "code"], registry=registry)
        self.duration = Histogram("enigma_s3_request_duration_seconds", "Time from a request's "
                                  "arrival to the last byte of its response, by operation",
                                  ["operation"], buckets=DURATION_BUCKETS, registry=registry)
        self.received = Counter("enigma_s3_received_bytes", "Request body bytes received "
                                "(after HTTP framing, before aws-chunked decoding)",
                                registry=registry)
        self.sent = Counter("enigma_s3_sent_bytes", "Response body bytes sent",
                            registry=registry)
        self.in_flight = Gauge("enigma_s3_requests_in_flight", "S3 requests being handled",
                               registry=registry)
        # labels() costs a lock and a tuple per call: keep the children.
        self._counted: dict[tuple[str, str], Any] = {}
        self._timed: dict[str, Any] = {}

    def wrap(self, app: Any) -> Callable[..., Any]:
        """``app`` as an ASGI app whose HTTP requests are measured."""

        async def measured(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            status = 500  # what the server answers if the app fails before responding

            async def counting_receive() -> dict[str, Any]:
                message = await receive()
                body = message.get("body")
                if body:
                    self.received.inc(len(body))
                return message

            async def counting_send(message: dict[str, Any]) -> None:
                nonlocal status
                await send(message)
                if message["type"] == "http.response.start":
                    status = message["status"]
                elif message.get("body"):
                    self.sent.inc(len(message["body"]))

            start = time.perf_counter()
            self.in_flight.inc()
            try:
                await app(scope, counting_receive, counting_send)
            finally:
                self.in_flight.dec()
                self.observe(self.operation_of(scope), status, time.perf_counter() - start)

        return measured

    def operation_of(self, scope: dict[str, Any]) -> str:
        method = scope["method"]
        vhost = copy = False
        if self.domains or method == "PUT":
            for name, value in scope["headers"]:
                if name == b"x-amz-copy-source":
                    copy = True
                elif name == b"host" and self.domains:
                    host = value.decode("latin-1").lower()
                    host = host if host.startswith("[") else host.rsplit(":", 1)[0]
                    vhost = any(host.endswith("." + d) for d in self.domains)
        return operation(method, scope["path"], scope.get("query_string", b"").decode("latin-1"),
                         vhost=vhost, copy=copy)

    def observe(self, op: str, status: int, seconds: float) -> None:
        counter = self._counted.get((op, str(status)))
        if counter is None:
            counter = self._counted[op, str(status)] = self.requests.labels(op, str(status))
        counter.inc()
        timer = self._timed.get(op)
        if timer is None:
            timer = self._timed[op] = self.duration.labels(op)
        timer.observe(seconds)


class RepositoryCollector(Collector):
    """Repository totals, read from the manifest when Prometheus scrapes (cached briefly)."""

    def __init__(self, manifest: Any, db_path: str, ttl: float = STATS_TTL) -> None:
        self.manifest = manifest
        self.db_path = db_path
        self.ttl = ttl
        self._lock = threading.Lock()  # scrapes only: never taken by a request
        self._stats: dict[str, int] = {}
        self._at = -ttl

    def stats(self) -> dict[str, int]:
        with self._lock:
            if time.monotonic() - self._at >= self.ttl:
                self._stats = self._read()
                self._at = time.monotonic()
            return self._stats

    def _read(self) -> dict[str, int]:
        chunks, plain, stored = self.manifest.chunk_totals()
        buckets = sum(1 for b in self.manifest.list_buckets() if b.name != UPLOADS)
        objects, object_bytes = self._object_totals()
        return {"buckets": buckets, "objects": objects, "object_bytes": object_bytes,
                "chunks": chunks, "chunk_bytes": plain, "stored_bytes": stored}

    def _object_totals(self) -> tuple[int, int]:
        """(objects, their bytes) outside the internal uploads bucket.

        The manifest has no named read for this yet (a core ``object_totals`` would be its
        home), so this is one read-only query on a private connection: it takes none of the
        manifest's locks and never blocks a writer (WAL).
        """
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5.0)
        try:
            row = conn.execute("SELECT count(*), COALESCE(SUM(size), 0) FROM objects"
                               " WHERE bucket != ?", (UPLOADS,)).fetchone()
        finally:
            conn.close()
        return int(row[0]), int(row[1])

    def collect(self) -> Iterator[Metric]:
        try:
            stats = self.stats()
        except (sqlite3.Error, OSError, ValueError) as exc:
            # The request metrics still get through; the scrape just lacks these gauges.
            log.warning("metrics: cannot read repository totals: %s", exc)
            return
        for name, key, text in (
            ("enigma_s3_buckets", "buckets", "Buckets (all key pairs)"),
            ("enigma_s3_objects", "objects", "Objects in all buckets"),
            ("enigma_s3_object_bytes", "object_bytes", "Logical size of all objects"),
            ("enigma_repository_chunks", "chunks", "Unique chunks in the repository "
             "(objects and CLI backups share them)"),
            ("enigma_repository_chunk_bytes", "chunk_bytes", "Plaintext bytes of the unique "
             "chunks"),
            ("enigma_repository_stored_bytes", "stored_bytes", "Stored (compressed, sealed) "
             "bytes of one copy of each chunk"),
        ):
            yield GaugeMetricFamily(name, text, value=stats[key])
        if stats["stored_bytes"]:
            yield GaugeMetricFamily("enigma_repository_compression_ratio", "Plaintext over "
                                    "stored bytes of all unique chunks",
                                    value=stats["chunk_bytes"] / stats["stored_bytes"])
        yield from pipeline_metrics(TELEMETRY.snapshot())
        yield from self._cluster()

    def _cluster(self) -> Iterator[GaugeMetricFamily]:
        """Raft state when the manifest is replicated (enigma-raft), read live."""
        status = self.manifest.cluster_status()
        if status is None:
            return
        role = GaugeMetricFamily("enigma_raft_role", "This node's Raft role (1 for the "
                                 "current one)", labels=["role"])
        for name in ("follower", "candidate", "leader"):
            role.add_metric([name], 1 if status["role"] == name else 0)
        yield role
        for name, key, text in (
            ("enigma_raft_term", "term", "Current Raft term"),
            ("enigma_raft_commit_index", "commit_index", "Highest log entry known committed"),
            ("enigma_raft_last_applied", "last_applied", "Highest log entry applied to this "
             "node's manifest"),
        ):
            yield GaugeMetricFamily(name, text, value=status[key] or 0)
        yield GaugeMetricFamily("enigma_raft_apply_lag", "Committed entries not yet applied "
                                "here", value=(status["commit_index"] or 0)
                                - (status["last_applied"] or 0))
        lag = GaugeMetricFamily("enigma_raft_peer_lag", "Committed entries a peer's log lacks "
                                "(the leader reports it)", labels=["peer"])
        for peer, match in sorted(status["peers_match_index"].items()):
            lag.add_metric([peer], max((status["commit_index"] or 0) - match, 0))
        yield lag


def pipeline_metrics(now: TelemetrySnapshot) -> Iterator[Metric]:
    """This process's chunk and backend counters (enigma.telemetry), read at scrape time:
    the pipeline counts into them whichever front door (S3 or a CLI in-process) used it."""
    for name, value, text in (
        ("enigma_chunks_written", now.chunks_written, "New chunks stored (deduplication "
         "found no copy)"),
        ("enigma_chunks_deduplicated", now.chunks_deduplicated, "Chunks not stored again "
         "because the repository already had them"),
        ("enigma_chunk_written_plain_bytes", now.bytes_written_plain, "Plaintext bytes of "
         "the new chunks"),
        ("enigma_chunk_written_stored_bytes", now.bytes_written_stored, "Stored (compressed, "
         "sealed) bytes of the new chunks, one copy"),
        ("enigma_chunk_deduplicated_bytes", now.bytes_deduplicated, "Plaintext bytes not "
         "stored again thanks to deduplication"),
    ):
        yield CounterMetricFamily(name, text, value=value)
    ratio = now.compression_ratio
    if ratio is not None:
        yield GaugeMetricFamily("enigma_compression_ratio", "Plaintext over stored bytes of "
                                "the chunks this process wrote", value=ratio)
    errors = CounterMetricFamily("enigma_backend_errors", "Failed storage calls, by "
                                 "provider and kind (transient: retried; exhausted: retry "
                                 "budget spent; permanent: not retried)",
                                 labels=["provider", "kind"])
    for (provider, kind), n in sorted(now.backend_errors.items()):
        errors.add_metric([provider, kind], n)
    yield errors
    retries = CounterMetricFamily("enigma_backend_retries", "Storage calls repeated after a "
                                  "transient error, by provider", labels=["provider"])
    for provider, n in sorted(now.backend_retries.items()):
        retries.add_metric([provider], n)
    yield retries


class MetricsServer:
    """``GET /metrics`` on its own thread, stopped cleanly by ``close``."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int,
                 where: Callable[[], str]) -> None:
        from prometheus_client import start_http_server

        try:
            self.httpd, self.thread = start_http_server(port, host, registry)
        except socket.gaierror as exc:
            raise ConfigError(f"{where()}: cannot resolve {host!r}: {exc.strerror}") from None
        except OSError as exc:
            raise ConfigError(f"{where()}: cannot listen on {host}:{port}: "
                              f"{exc.strerror or exc}") from None

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def new_registry() -> CollectorRegistry:
    """A private registry (never the global one), with the process's CPU, memory and fds."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return registry
