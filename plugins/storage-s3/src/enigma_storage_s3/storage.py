"""``S3Storage``: Amazon S3 and S3-compatible servers (MinIO, SeaweedFS, RustFS, Garage, ...).

Objects are stored one-to-one under the bucket (plus an optional key ``prefix``). One
boto3 client per provider instance serves every thread (boto3 clients are thread-safe);
its urllib3 pool is sized to the core's upload and prefetch concurrency.

boto3 and botocore are imported lazily: this module is imported when the core asks for
storage types, and boto3 only when a provider first talks to its server, so
``enigma --help`` stays fast.

Errors: the core retries ``TransientStorageError`` with backoff itself, so botocore's own
retries are kept to one quick extra attempt, and every failure is translated into the
core's error tree with a one-line, secret-free message naming the bucket and the cause.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

from enigma.errors import ConfigError, ObjectNotFound, StorageError, TransientStorageError
from enigma.interfaces import StorageProvider

if TYPE_CHECKING:  # pragma: no cover - typing only, never imported at run time
    from botocore.client import BaseClient

__all__ = ["BucketNotFound", "S3Storage", "translate_error"]

MiB = 1024 * 1024
#: Multipart part size for ``put_stream``; it doubles every 1,000 parts, so S3's limit of
#: 10,000 parts never caps an object's size (S3 allows parts of different sizes).
DEFAULT_PART_SIZE = 8 * MiB
#: S3's minimum size of every part but the last.
MIN_PART_SIZE = 5 * MiB
#: Parts of one streamed object uploaded at once (memory: this many parts plus one).
STREAM_CONCURRENCY = 4
#: Attempts to resume an interrupted ``get_stream`` download from where it stopped.
STREAM_RESUMES = 3
#: Tries per multipart part: the core cannot retry a half-consumed stream, so transient
#: failures of one part (which is in memory) are retried here, with a short backoff.
PART_TRIES = 3

#: Error codes worth retrying (besides any 5xx status): throttling, timeouts, conflicts.
TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException",
    "RequestThrottled", "RequestThrottledException", "TooManyRequestsException",
    "ProvisionedThroughputExceededException", "RequestLimitExceeded", "BandwidthLimitExceeded",
    "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete",
    "InternalError", "ServiceUnavailable", "OperationAborted", "EC2ThrottledException",
})
NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404", "NoSuchVersion"})
CREDENTIAL_CODES = {
    "InvalidAccessKeyId": "unknown access key (check access_key)",
    "SignatureDoesNotMatch": "signature does not match (check secret_key)",
    "InvalidToken": "invalid session token (check the AWS credentials)",
    "ExpiredToken": "the session token has expired (refresh the AWS credentials)",
    "TokenRefreshRequired": "the session token has expired (refresh the AWS credentials)",
    "InvalidSecurity": "invalid credentials (check access_key/secret_key)",
    "AuthorizationHeaderMalformed": "malformed authorization (check region and access_key)",
    "RequestTimeTooSkewed": "this machine's clock differs too much from the server's",
}


class BucketNotFound(StorageError):
    """The bucket does not exist (``create_bucket`` creates it; every other call fails)."""


def _default_pool_size() -> int:
    """Connections to keep: the core's uploads (8 per provider) plus restore prefetch
    (2 per core) plus multipart streams, so no thread ever waits for, or discards, one."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(32, 2 * cpus + 16)


def _public_url(url: str) -> str:
    """An endpoint for messages: any ``user:password@`` stripped (never print secrets)."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        parts = parts._replace(netloc=host)
    return urlunsplit(parts)


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _reason(exc: BaseException | None) -> str:
    """The innermost useful cause: ``[Errno 111] Connection refused`` -> ``connection refused``."""
    seen = 0
    while exc is not None and seen < 10:
        seen += 1
        inner = getattr(exc, "kwargs", {}).get("error") if hasattr(exc, "kwargs") else None
        if isinstance(inner, BaseException):
            exc = inner
            continue
        reason = getattr(exc, "reason", None)  # urllib3 wraps the socket error here
        if isinstance(reason, BaseException) and reason is not exc:
            exc = reason
            continue
        if isinstance(exc, OSError) and exc.strerror:
            return exc.strerror[:1].lower() + exc.strerror[1:]
        text = str(exc)
        if "]" in text and "[Errno" in text:
            text = text.rsplit("]", 1)[1].strip()
            return text[:1].lower() + text[1:]
        if ": " in text and "object at 0x" in text:  # "<...Connection object at 0x..>: msg"
            text = text.split(": ", 1)[1]
        return _one_line(text or type(exc).__name__, 120)
    return "unknown error"


def translate_error(exc: BaseException, where: str, endpoint: str, *,
                    key: str | None = None) -> StorageError:
    """Map a boto3/botocore/urllib3 failure to the core's errors, one line, no secrets.

    ``where`` names the provider (``s3 bucket 'x' at http://...``); ``key`` the object, if
    any. 404s on objects become ``ObjectNotFound``; 5xx, throttling, timeouts and broken
    connections ``TransientStorageError``; everything else a permanent ``StorageError``.
    """
    from botocore import exceptions as bex

    obj = f" for {key}" if key else ""
    to = "" if endpoint in where else f" to {endpoint}"  # name the endpoint once
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, bex.ClientError):
        error = exc.response.get("Error", {}) or {}
        meta = exc.response.get("ResponseMetadata", {}) or {}
        code = str(error.get("Code") or "")
        status = int(meta.get("HTTPStatusCode") or 0)
        message = _one_line(error.get("Message") or "")
        if code in TRANSIENT_CODES or status >= 500 or status == 429:
            detail = f"{code or status}" + (f": {message}" if message else "")
            return TransientStorageError(f"{where}: server busy or failing{obj} ({detail})")
        if code == "NoSuchBucket":
            return BucketNotFound(f"{where}: bucket does not exist (create it, or run: "
                                  "enigma init)")
        if key is not None and (code in NOT_FOUND_CODES or status == 404):
            return ObjectNotFound(f"{where}: no such object {key}")
        if code in CREDENTIAL_CODES:
            return StorageError(f"{where}: {CREDENTIAL_CODES[code]}")
        if code in ("AccessDenied", "AllAccessDisabled", "403", "Forbidden") or status == 403:
            return StorageError(f"{where}: access denied{obj} "
                                "(check access_key/secret_key and the bucket's permissions)")
        if code in ("PermanentRedirect", "301", "IllegalLocationConstraintException") or \
                status == 301:
            region = (meta.get("HTTPHeaders") or {}).get("x-amz-bucket-region")
            hint = f"set region = \"{region}\"" if region else "check region"
            return StorageError(f"{where}: the bucket is in another region ({hint})")
        if code in ("404", "NotFound") or status == 404:
            return BucketNotFound(f"{where}: bucket does not exist (create it, or run: "
                                  "enigma init)")
        if code == "InvalidBucketName":
            return StorageError(f"{where}: invalid bucket name")
        detail = code or f"HTTP {status}"
        return StorageError(f"{where}: {detail}{obj}" + (f": {message}" if message else ""))
    if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError):
        return StorageError(f"{where}: no AWS credentials found (set access_key and secret_key, "
                            "or configure the AWS default credential chain)")
    if isinstance(exc, bex.CredentialRetrievalError):
        return StorageError(f"{where}: cannot get AWS credentials: {_one_line(str(exc), 120)}")
    if isinstance(exc, bex.SSLError):
        return StorageError(f"{where}: TLS error{to}: {_reason(exc)}")
    if isinstance(exc, bex.ConnectTimeoutError):
        return TransientStorageError(f"{where}: cannot connect{to}: timed out")
    if isinstance(exc, bex.EndpointConnectionError | bex.ProxyConnectionError):
        return TransientStorageError(f"{where}: cannot connect{to}: {_reason(exc)}")
    if isinstance(exc, bex.ReadTimeoutError):
        return TransientStorageError(f"{where}: timed out waiting for the server{obj}")
    if isinstance(exc, bex.ConnectionError | bex.HTTPClientError | bex.IncompleteReadError):
        return TransientStorageError(f"{where}: connection{to} failed{obj}: {_reason(exc)}")
    if isinstance(exc, bex.ParamValidationError):
        return StorageError(f"{where}: invalid request{obj}: {_one_line(str(exc), 160)}")
    if isinstance(exc, bex.NoRegionError):
        return StorageError(f"{where}: no region configured (set region)")
    if _is_network_error(exc):
        return TransientStorageError(f"{where}: connection{to} failed{obj}: {_reason(exc)}")
    return StorageError(f"{where}: {type(exc).__name__}{obj}: {_one_line(str(exc), 160)}")


def _is_network_error(exc: BaseException) -> bool:
    """urllib3/http.client/socket failures that escape botocore (e.g. while reading a body)."""
    import http.client

    from urllib3 import exceptions as u3

    return isinstance(exc, u3.HTTPError | http.client.HTTPException | ConnectionError
                      | TimeoutError)


class S3Storage(StorageProvider):
    """A bucket on Amazon S3 or any S3-compatible server, through one shared boto3 client."""

    name = "s3"
    aliases = ("s3compatible", "minio", "rustfs", "garage")
    description = "Amazon S3 and S3-compatible servers (MinIO, SeaweedFS, RustFS, Garage)"

    def __init__(
        self,
        *,
        bucket: str,
        region: str | None = None,
        endpoint_url: str | None = None,
        path_style: bool = False,
        access_key: str | None = None,
        secret_key: str | None = None,
        prefix: str = "",
        max_pool_connections: int | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        part_size: int = DEFAULT_PART_SIZE,
        verify_tls: bool | str = True,
        checksums: str = "auto",
    ) -> None:
        if not isinstance(bucket, str) or not bucket.strip():
            raise ConfigError("S3 storage needs 'bucket' (the bucket name)")
        self.bucket = bucket.strip()
        for option, value in (("region", region), ("endpoint_url", endpoint_url),
                              ("access_key", access_key), ("secret_key", secret_key)):
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"S3 storage option '{option}' must be a string")
        if endpoint_url is not None:
            endpoint_url = endpoint_url.strip().rstrip("/")
            if urlsplit(endpoint_url).scheme not in ("http", "https") or \
                    not urlsplit(endpoint_url).netloc:
                raise ConfigError("S3 storage 'endpoint_url' must look like "
                                  "http(s)://host[:port]")
        if not isinstance(path_style, bool):
            raise ConfigError("S3 storage 'path_style' must be true or false")
        if bool(access_key) != bool(secret_key):
            raise ConfigError("S3 storage needs both 'access_key' and 'secret_key', or neither "
                              "(then the AWS default credential chain is used)")
        if not isinstance(prefix, str):
            raise ConfigError("S3 storage 'prefix' must be a string")
        prefix = prefix.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        if max_pool_connections is None:
            max_pool_connections = _default_pool_size()
        for option, number in (("max_pool_connections", max_pool_connections),
                               ("connect_timeout", connect_timeout),
                               ("read_timeout", read_timeout), ("part_size", part_size)):
            if isinstance(number, bool) or not isinstance(number, int | float) or number <= 0:
                raise ConfigError(f"S3 storage option '{option}' must be a positive number")
        if not isinstance(part_size, int) or part_size < MIN_PART_SIZE:
            raise ConfigError(f"S3 storage 'part_size' must be an integer >= {MIN_PART_SIZE}")
        if not isinstance(verify_tls, bool | str):
            raise ConfigError("S3 storage 'verify_tls' must be true, false or a CA bundle path")
        if checksums not in ("auto", "when_supported", "when_required"):
            raise ConfigError("S3 storage 'checksums' must be \"auto\", \"when_supported\" or "
                              "\"when_required\"")
        if checksums == "auto":
            # AWS verifies CRC32 checksums; some S3-compatible servers reject the trailing
            # (aws-chunked) ones botocore sends by default. Chunks are AES-GCM sealed anyway.
            checksums = "when_required" if endpoint_url else "when_supported"
        self.checksums = checksums
        self.region = region or None
        self.endpoint_url = endpoint_url or None
        self.path_style = path_style
        self.max_pool_connections = int(max_pool_connections)
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.part_size = part_size
        self.verify_tls = verify_tls
        self._credentials = (access_key or None, secret_key or None)
        self._client: BaseClient | None = None
        self._client_lock = threading.Lock()

    # -- naming and errors ------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The endpoint for messages (no credentials); AWS's regional one when none is set."""
        if self.endpoint_url:
            return _public_url(self.endpoint_url)
        return f"https://s3.{self.region or 'us-east-1'}.amazonaws.com"

    @property
    def where(self) -> str:
        """How messages name this provider: bucket, prefix and (custom) endpoint."""
        text = f"s3 bucket '{self.bucket}'"
        if self.prefix:
            text += f" prefix '{self.prefix}'"
        if self.endpoint_url:
            text += f" at {self.endpoint}"
        return text

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, endpoint={self.endpoint!r})"

    def _error(self, exc: BaseException, key: str | None = None) -> StorageError:
        return translate_error(exc, self.where, self.endpoint, key=key)

    def _key(self, key: str) -> str:
        if not isinstance(key, str) or not key or key.startswith("/"):
            raise StorageError(f"{self.where}: invalid object key {key!r}")
        return self.prefix + key

    # -- the client -------------------------------------------------------------------------

    @property
    def client(self) -> BaseClient:
        """The one boto3 client of this provider, built on first use (boto3 imported here)."""
        client = self._client
        if client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._make_client()
                client = self._client
        return client

    def _make_client(self) -> BaseClient:
        import boto3
        from botocore.config import Config

        access_key, secret_key = self._credentials
        config = Config(
            region_name=self.region,
            signature_version="s3v4",
            # The core retries transient errors with backoff and a bounded total time; one
            # quick extra attempt here only smooths over a stale pooled connection.
            retries={"mode": "standard", "total_max_attempts": 2},
            s3={"addressing_style": "path" if self.path_style else "auto"},
            max_pool_connections=self.max_pool_connections,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            tcp_keepalive=True,
            request_checksum_calculation=self.checksums,
            response_checksum_validation=self.checksums,
        )
        if self.verify_tls is False:
            # The user chose this; a warning per request would bury the one-line output.
            import warnings

            from urllib3.exceptions import InsecureRequestWarning

            warnings.filterwarnings("ignore", category=InsecureRequestWarning)
        # A private session: the default one is not safe to build clients from in threads.
        session = boto3.session.Session(aws_access_key_id=access_key,
                                        aws_secret_access_key=secret_key,
                                        region_name=self.region)
        try:
            return session.client("s3", endpoint_url=self.endpoint_url, config=config,
                                  verify=self.verify_tls)
        except Exception as exc:
            raise self._error(exc) from exc

    def _call(self, method: str, key: str | None = None, **params: Any) -> Any:
        """One client call with this bucket; every failure translated."""
        try:
            return getattr(self.client, method)(Bucket=self.bucket, **params)
        except StorageError:
            raise
        except Exception as exc:
            raise self._error(exc, key) from exc

    # -- writes -----------------------------------------------------------------------------

    def put(self, key: str, data: bytes | memoryview) -> None:
        """One PutObject: S3 replaces objects atomically."""
        body = data if isinstance(data, bytes) else bytes(data)
        self._call("put_object", key, Key=self._key(key), Body=body)

    def put_stream(self, key: str, stream: BinaryIO) -> None:
        """Store a stream with a bounded number of parts in memory.

        A stream that fits in one part is a plain PutObject; a longer one is a multipart
        upload, a few parts at a time, aborted if anything fails.
        """
        first = _read_exactly(stream, self.part_size)
        if len(first) < self.part_size:
            self.put(key, first)
            return
        name = self._key(key)
        upload_id = self._call("create_multipart_upload", key, Key=name)["UploadId"]
        try:
            parts = self._upload_parts(key, name, upload_id, first, stream)
            self._call("complete_multipart_upload", key, Key=name, UploadId=upload_id,
                       MultipartUpload={"Parts": parts})
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=name,
                                                   UploadId=upload_id)
            raise

    def _upload_parts(self, key: str, name: str, upload_id: str, first: bytes,
                      stream: BinaryIO) -> list[dict[str, Any]]:
        """Read and upload parts, keeping at most STREAM_CONCURRENCY in flight."""
        etags: dict[int, str] = {}
        window: list[Future[None]] = []

        def send(number: int, body: bytes) -> None:
            for attempt in range(PART_TRIES):
                try:
                    reply = self._call("upload_part", key, Key=name, UploadId=upload_id,
                                       PartNumber=number, Body=body)
                    break
                except TransientStorageError:
                    if attempt == PART_TRIES - 1:
                        raise
                    time.sleep(0.5 * 2**attempt * (0.5 + random.random()))
            etags[number] = reply["ETag"]

        with ThreadPoolExecutor(STREAM_CONCURRENCY, thread_name_prefix="enigma-s3-part") as pool:
            try:
                number, body = 1, first
                while body:
                    if len(window) >= STREAM_CONCURRENCY:
                        window.pop(0).result()
                    window.append(pool.submit(send, number, body))
                    number += 1
                    body = _read_exactly(stream, self.part_size << ((number - 1) // 1000))
                for future in window:
                    future.result()
            except BaseException:
                for future in window:
                    future.cancel()
                raise
        return [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]

    def delete(self, key: str) -> None:
        """DeleteObject; S3 answers 204 for a missing key too, some servers 404 (ignored)."""
        with contextlib.suppress(ObjectNotFound):
            self._call("delete_object", key, Key=self._key(key))

    # -- reads ------------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        """GetObject and read the whole body (a broken transfer is transient)."""
        reply = self._call("get_object", key, Key=self._key(key))
        try:
            with contextlib.closing(reply["Body"]) as body:
                return body.read()
        except Exception as exc:
            raise self._error(exc, key) from exc

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """A ranged GET; a range starting at or past the end is empty (S3 answers 416)."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must be >= 0")
        if length == 0:
            if not self.exists(key):
                raise ObjectNotFound(f"{self.where}: no such object {key}")
            return b""
        try:
            reply = self._call("get_object", key, Key=self._key(key),
                               Range=f"bytes={offset}-{offset + length - 1}")
        except StorageError as exc:
            if isinstance(exc.__cause__, Exception) and _code(exc.__cause__) == "InvalidRange":
                return b""
            raise
        try:
            with contextlib.closing(reply["Body"]) as body:
                data = body.read()
        except Exception as exc:
            raise self._error(exc, key) from exc
        if not reply.get("ContentRange"):  # a server that ignored the Range header
            data = data[offset : offset + length]
        return data[:length]

    def get_stream(self, key: str) -> BinaryIO:
        """The object as a buffered file; an interrupted transfer resumes with a ranged GET."""
        reply = self._call("get_object", key, Key=self._key(key))
        raw = _ObjectReader(self, key, reply)
        return io.BufferedReader(raw, 1 * MiB)  # type: ignore[return-value]

    def exists(self, key: str) -> bool:
        """HeadObject: 404 means no.

        A HEAD answer has no body, so a refusal is a bare 403; a one-byte GET then tells
        which (bad key, bad secret, no permission) for the error message.
        """
        try:
            self._call("head_object", key, Key=self._key(key))
        except ObjectNotFound:
            return False
        except TransientStorageError:
            raise
        except StorageError as exc:
            if _code(exc.__cause__) not in ("403", "400", "Forbidden", "BadRequest"):
                raise
            try:
                self._call("get_object", key, Key=self._key(key), Range="bytes=0-0")
            except ObjectNotFound:
                return False
            except StorageError as again:
                if _code(again.__cause__) == "InvalidRange":  # an empty object
                    return True
                raise
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        """Every key under ``prefix``, 1,000 per ListObjectsV2 page, however many pages."""
        if not isinstance(prefix, str):
            raise StorageError(f"{self.where}: invalid prefix {prefix!r}")
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix,
                                   PaginationConfig={"PageSize": 1000})
        skip = len(self.prefix)
        iterator = iter(pages)
        while True:
            try:
                page = next(iterator)
            except StopIteration:
                return
            except Exception as exc:
                raise self._error(exc) from exc
            for item in page.get("Contents", ()):
                name = item["Key"]
                if name.endswith("/"):  # a "directory marker" some servers list
                    continue
                yield name[skip:]

    # -- bucket -----------------------------------------------------------------------------

    def check(self) -> None:
        """HeadBucket; a bare 403/400 is diagnosed with a listing that carries an error code."""
        try:
            self._call("head_bucket")
        except TransientStorageError:
            raise
        except StorageError as exc:
            cause = exc.__cause__
            if _code(cause) in ("403", "400", "Forbidden", "BadRequest"):
                self._call("list_objects_v2", MaxKeys=1, Prefix=self.prefix)
                return  # listing works (odd, but the bucket is usable)
            raise

    def create_bucket(self) -> bool:
        """Create the bucket if missing (in ``region``); True if this call created it."""
        try:
            self.check()
            return False
        except BucketNotFound:
            pass
        region = self.client.meta.region_name
        params: dict[str, Any] = {}
        if region and region not in ("us-east-1", "aws-global"):
            params["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(Bucket=self.bucket, **params)
        except Exception as exc:
            code = _code(exc)
            if code == "BucketAlreadyOwnedByYou":
                return False
            if code == "BucketAlreadyExists":
                raise StorageError(f"{self.where}: the bucket name is taken by another account "
                                   "(choose another 'bucket')") from exc
            if code in ("AccessDenied", "403", "Forbidden"):
                raise StorageError(f"{self.where}: bucket does not exist and these credentials "
                                   "may not create it (create it yourself, or grant "
                                   "s3:CreateBucket)") from exc
            raise self._error(exc) from exc
        return True

    def close(self) -> None:
        """Close the client's connection pool."""
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()


def _code(exc: BaseException | None) -> str:
    """A botocore ClientError's error code ('' for anything else)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str((response.get("Error") or {}).get("Code") or "")
    return ""


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes, fewer only at the end (streams may return short reads)."""
    first = stream.read(size)
    if not first or len(first) >= size:
        return bytes(first or b"")
    buffer = bytearray(first)
    while len(buffer) < size:
        more = stream.read(size - len(buffer))
        if not more:
            break
        buffer += more
    return bytes(buffer)


class _ObjectReader(io.RawIOBase):
    """A GetObject body as a raw file: read errors are translated, a broken transfer is
    resumed from the current offset (pinned to the same ETag) a few times."""

    def __init__(self, storage: S3Storage, key: str, reply: dict[str, Any]) -> None:
        self._storage = storage
        self._key = key
        self._body = reply["Body"]
        self._etag = reply.get("ETag")
        self._size = reply.get("ContentLength")
        self._pos = 0
        self._resumes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while True:
            try:
                data = self._body.read(len(view))
            except Exception as exc:
                error = self._storage._error(exc, self._key)
                if not isinstance(error, TransientStorageError) or \
                        self._resumes >= STREAM_RESUMES:
                    raise error from exc
                self._resume()
                continue
            n = len(data)
            view[:n] = data
            self._pos += n
            return n

    def _resume(self) -> None:
        self._resumes += 1
        with contextlib.suppress(Exception):
            self._body.close()
        params: dict[str, Any] = {"Key": self._storage._key(self._key),
                                  "Range": f"bytes={self._pos}-"}
        if self._etag:
            params["IfMatch"] = self._etag
        if self._size is not None and self._pos >= self._size:
            self._body = io.BytesIO(b"")
            return
        self._body = self._storage._call("get_object", self._key, **params)["Body"]

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self._body.close()
        super().close()
