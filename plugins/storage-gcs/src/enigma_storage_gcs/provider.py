"""Google Cloud Storage as an Enigma storage provider (``type = "Gcs"``).

Objects live in one bucket, optionally under a ``prefix``. google-cloud-storage is
imported only when the first request is made, so ``enigma --help`` does not pay for it.
One ``storage.Client`` serves every thread (as Google's own transfer manager does), over
a requests session whose connection pool is sized to the core's concurrency.

Credentials: ``credentials_file`` or ``secret_key`` (a service-account JSON key, so it can
be an ``enc:`` token), else Application Default Credentials (``GOOGLE_APPLICATION_
CREDENTIALS``, gcloud, the metadata server). With an emulator (``endpoint_url`` or the
standard ``STORAGE_EMULATOR_HOST``) and no explicit credentials: anonymous.

Retries: the core retries ``TransientStorageError`` with exponential backoff and jitter,
so the library's own policy (up to 120 s per call) is cut to 1 s of quick retries, which
covers a dropped keep-alive connection and lets a resumable upload resend one chunk.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar
from urllib.parse import urlsplit, urlunsplit

from enigma.errors import (
    ConfigError,
    EnigmaError,
    ObjectNotFound,
    StorageError,
    TransientStorageError,
)
from enigma.interfaces import StorageProvider
from enigma.streams import range_stream

if TYPE_CHECKING:
    from google.cloud.storage import Blob, Bucket, Client

__all__ = ["STORAGE_PROVIDERS", "BucketNotFound", "GcsStorage"]

T = TypeVar("T")
MiB = 1024 * 1024

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
#: Project used with an emulator when none is configured (emulators accept any).
EMULATOR_PROJECT = "enigma-emulator"
SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)
#: Chunk size of resumable uploads from ``put_stream``: the memory one stream holds
#: (a multiple of 256 KiB, as GCS requires).
UPLOAD_CHUNK_SIZE = 8 * MiB
#: Range size of ``get_stream`` reads.
STREAM_READ_SIZE = 4 * MiB
#: Names per listing page (GCS's maximum).
LIST_PAGE_SIZE = 1000
#: Total time the library may spend retrying one call before the core takes over.
SDK_RETRY_SECONDS = 1.0

#: Bucket names: 3-222 lowercase letters, digits, '-', '_', '.'; alphanumeric ends.
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


class BucketNotFound(StorageError):
    """The bucket does not exist (``enigma init`` creates it)."""


def _default_pool_size() -> int:
    """Connections to keep: the core's uploads (8 per provider), restore prefetch (2 per
    core) and streams, so no thread waits for or discards one."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(32, 2 * cpus + 16)


def _public_url(url: str) -> str:
    """A URL fit for messages: no ``user:pass@`` and no query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _network_reason(exc: BaseException) -> str:
    """``connection refused``, ``timed out``, ...: the cause without requests' long text."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 12:
        seen.append(current)
        if isinstance(current, TimeoutError):
            return "timed out"
        if type(current) in (ConnectionRefusedError, ConnectionResetError,
                             ConnectionAbortedError) and current.strerror:
            return current.strerror[:1].lower() + current.strerror[1:]
        nested = getattr(current, "reason", None)  # urllib3 keeps the socket error here
        if not isinstance(nested, BaseException):
            nested = next((a for a in getattr(current, "args", ())
                           if isinstance(a, BaseException)), None)
        current = nested or current.__cause__ or current.__context__
    text = " ".join(str(e) for e in seen).lower()
    for needle, reason in (("timed out", "timed out"), ("timeout", "timed out"),
                           ("connection refused", "connection refused"),
                           ("name or service not known", "host not found"),
                           ("nodename nor servname", "host not found"),
                           ("temporary failure in name resolution", "host not found"),
                           ("connection reset", "connection reset"),
                           ("connection aborted", "connection aborted"),
                           ("remote end closed", "connection closed by the server"),
                           ("certificate", "TLS certificate problem"),
                           ("ssl", "TLS error")):
        if needle in text:
            return reason
    return "connection failed"


def _emulator_url(value: str) -> str:
    """``STORAGE_EMULATOR_HOST`` may be ``host:port``; the client wants a URL."""
    value = value.strip().rstrip("/")
    return value if "://" in value else f"http://{value}"


def _load_key(info: Any, source: str) -> tuple[Any, str | None]:
    """Credentials from a key file's JSON, by its type (the type-specific loaders: the
    generic ones would also run external programs named in an untrusted file)."""
    kind = info.get("type") if isinstance(info, dict) else None
    try:
        if kind == "service_account":
            from google.oauth2 import service_account

            creds = service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
            return creds, info.get("project_id")
        if kind == "authorized_user":
            from google.oauth2.credentials import Credentials

            creds = Credentials.from_authorized_user_info(info, scopes=SCOPES)
            return creds, info.get("quota_project_id")
    except ValueError:
        raise ConfigError(f"Gcs storage {source} is not a valid {kind} key") from None
    raise ConfigError(f"Gcs storage {source}: unsupported credential type {kind!r} (use a "
                      "service_account or authorized_user key; other kinds work through "
                      "GOOGLE_APPLICATION_CREDENTIALS)")


class _UploadStream:
    """What a resumable upload needs from a plain stream: ``read``, ``tell``, and a
    ``seek`` back into the last block read (the library rewinds to resend a chunk after a
    failure). Memory: one block."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._pos = 0
        self._last = b""
        self._last_start = 0
        self._replay: memoryview | None = None

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET or not self._last_start <= pos <= self._last_start + len(
                self._last):
            raise io.UnsupportedOperation("can only rewind into the last block read")
        self._replay = memoryview(self._last)[pos - self._last_start:]
        self._pos = pos
        return pos

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes, short only at the end of the stream (a short read would
        make the library finish the upload early)."""
        start = self._pos
        parts: list[bytes] = []
        if self._replay is not None and len(self._replay):
            take = self._replay if size < 0 else self._replay[:size]
            parts.append(bytes(take))
            self._replay = self._replay[len(take):]
        if size < 0:
            parts.append(bytes(self._stream.read() or b""))
        else:
            want = size - len(parts[0]) if parts else size
            while want > 0:
                more = self._stream.read(want)
                if not more:
                    break
                parts.append(bytes(more))
                want -= len(more)
        data = b"".join(parts)
        self._last, self._last_start = data, start
        self._pos += len(data)
        return data


class GcsStorage(StorageProvider):
    """Objects in one Google Cloud Storage bucket; see the plugin README for options."""

    name = "gcs"
    description = "Google Cloud Storage (a bucket)"

    #: Names per listing page; an attribute so tests can force many pages.
    list_page_size: int = LIST_PAGE_SIZE

    def __init__(
        self,
        *,
        bucket: str,
        project: str | None = None,
        endpoint_url: str | None = None,
        credentials_file: str | None = None,
        secret_key: str | None = None,
        location: str | None = None,
        prefix: str = "",
        max_connections: int | None = None,
        connect_timeout: float = 10,
        read_timeout: float = 60,
        access_key: str | None = None,
        region: str | None = None,
        path_style: bool | None = None,
    ) -> None:
        # S3 notions the seed config gives every provider: GCS has no use for them
        # (``location`` is GCS's region; ``secret_key`` may carry a service-account key).
        del access_key, region, path_style
        if not isinstance(bucket, str) or not _BUCKET_NAME.match(bucket):
            raise ConfigError("Gcs storage 'bucket' must be a bucket name: 3-63 characters "
                              "(222 with dots) of lowercase letters, digits, '-', '_' and '.', "
                              "starting and ending with a letter or digit")
        self.bucket_name = bucket
        for option, value in (("project", project), ("endpoint_url", endpoint_url),
                              ("credentials_file", credentials_file),
                              ("secret_key", secret_key), ("location", location),
                              ("prefix", prefix)):
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"Gcs storage '{option}' must be a string")
        if endpoint_url and urlsplit(endpoint_url).scheme not in ("http", "https"):
            raise ConfigError("Gcs storage 'endpoint_url' must look like http://HOST:PORT")
        emulator = endpoint_url or os.environ.get(EMULATOR_ENV) or ""
        self.endpoint_url = _emulator_url(emulator) if emulator else None
        self.project = project or None
        self.location = location or None
        prefix = (prefix or "").strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        self._service_account: dict[str, Any] | None = None
        if secret_key:
            try:
                info = json.loads(secret_key)
            except ValueError:
                info = None
            if not isinstance(info, dict) or "type" not in info:
                raise ConfigError("Gcs storage 'secret_key' must be a service-account JSON key "
                                  "(HMAC keys are for the S3-compatible XML API: use type "
                                  "S3Compatible for those), or leave it out to use Application "
                                  "Default Credentials")
            self._service_account = info
        self.credentials_file = (os.path.expanduser(credentials_file)
                                 if credentials_file else None)
        if max_connections is None:
            max_connections = _default_pool_size()
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) \
                or max_connections < 1:
            raise ConfigError("Gcs storage 'max_connections' must be a positive integer")
        self.max_connections = max_connections
        for option, value in (("connect_timeout", connect_timeout),
                              ("read_timeout", read_timeout)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"Gcs storage '{option}' must be a positive number of "
                                  "seconds")
        self.timeout = (float(connect_timeout), float(read_timeout))
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._bucket: Bucket | None = None
        self._retry: Any = None

    # -- naming and errors ------------------------------------------------------------------

    @property
    def credential_source(self) -> str:
        """Which credentials are used (never their content)."""
        if self._service_account is not None:
            return "config secret_key"
        if self.credentials_file:
            return "config credentials_file"
        if self.endpoint_url:
            return "anonymous (emulator)"
        return "Application Default Credentials"

    @property
    def where(self) -> str:
        """How messages name this provider: bucket, prefix and (custom) endpoint."""
        text = f"gcs bucket '{self.bucket_name}'"
        if self.prefix:
            text += f" prefix '{self.prefix}'"
        if self.endpoint_url:
            text += f" at {_public_url(self.endpoint_url)}"
        return text

    def __repr__(self) -> str:
        return f"GcsStorage(bucket={self.bucket_name!r}, endpoint={self.endpoint_url!r})"

    def _name(self, key: str) -> str:
        if not isinstance(key, str) or not key or key.startswith("/"):
            raise StorageError(f"{self.where}: invalid object key {key!r}")
        return self.prefix + key

    def _translate(self, exc: BaseException, key: str | None) -> StorageError | None:
        """Map a library/network failure to the core's errors, one line, no secrets.

        A 404 with a key is ``ObjectNotFound`` only when the bucket exists (GCS, and more
        so emulators, do not always say which one is missing). Returns None for exceptions
        that are not storage failures, which the caller re-raises unchanged.
        """
        import requests
        from google.api_core import exceptions as api
        from google.auth import exceptions as auth

        obj = f" (object {key})" if key else ""
        endpoint = _public_url(self.endpoint_url) if self.endpoint_url else \
            "storage.googleapis.com"
        if isinstance(exc, api.RetryError):  # the library gave up: judge its last failure
            if exc.cause is not None and exc.cause is not exc:
                return self._translate(exc.cause, key)
            return TransientStorageError(f"{self.where}: gave up retrying{obj}")
        if isinstance(exc, api.GoogleAPICallError):
            status = exc.code or 0
            message = _one_line(exc.message or "", 160)
            reasons = {e.get("reason") for e in (exc.errors or []) if isinstance(e, dict)}
            detail = f"HTTP {status}" + (f": {message}" if message else "")
            if status in (408, 429) or status >= 500 or "rateLimitExceeded" in reasons:
                return TransientStorageError(f"{self.where}: server busy or failing{obj} "
                                             f"({detail})")
            if status == 401:
                return StorageError(f"{self.where}: authentication failed ({detail}); check "
                                    f"the credentials ({self.credential_source})")
            if status == 403:
                return StorageError(f"{self.where}: access denied{obj} ({detail})")
            if status == 404:
                if key is None or self._bucket_missing(exc):
                    return BucketNotFound(f"{self.where}: bucket does not exist (create it "
                                          "with: enigma init)")
                return ObjectNotFound(f"{self.where}: no such object {key}")
            if status == 412:
                return TransientStorageError(f"{self.where}: object changed while it was "
                                             f"being read{obj}")
            return StorageError(f"{self.where}: request failed{obj} ({detail})")
        if isinstance(exc, auth.DefaultCredentialsError):
            return StorageError(f"{self.where}: no usable Google credentials "
                                f"({_one_line(str(exc), 120)}); set GOOGLE_APPLICATION_"
                                "CREDENTIALS, run 'gcloud auth application-default login', "
                                "or set credentials_file")
        if isinstance(exc, auth.TransportError):
            return TransientStorageError(f"{self.where}: cannot reach the Google token "
                                         f"service: {_network_reason(exc)}")
        if isinstance(exc, auth.RefreshError):
            first = exc.args[0] if exc.args else exc
            return StorageError(f"{self.where}: cannot get an access token "
                                f"({_one_line(str(first), 120)}); check the credentials")
        connect_failed = isinstance(exc, requests.ConnectionError) and not isinstance(
            exc, requests.Timeout)
        if connect_failed or isinstance(exc, requests.ConnectTimeout):
            return TransientStorageError(f"{self.where}: cannot connect to {endpoint}: "
                                         f"{_network_reason(exc)}")
        if isinstance(exc, requests.RequestException | ConnectionError | TimeoutError):
            return TransientStorageError(f"{self.where}: connection to {endpoint} failed"
                                         f"{obj}: {_network_reason(exc)}")
        try:
            from google.resumable_media import DataCorruption, InvalidResponse
        except ImportError:  # pragma: no cover - a dependency of google-cloud-storage
            return None
        if isinstance(exc, DataCorruption):
            return TransientStorageError(f"{self.where}: checksum mismatch{obj} (corrupted in "
                                         "transit)")
        if isinstance(exc, InvalidResponse):
            status = getattr(exc.response, "status_code", 0) or 0
            kind = TransientStorageError if status >= 500 or status == 429 else StorageError
            return kind(f"{self.where}: request failed{obj} (HTTP {status})")
        return None

    def _bucket_missing(self, exc: BaseException) -> bool:
        """Whether a 404 on an object means the bucket is gone: ask by listing it."""
        text = str(getattr(exc, "message", "") or "").lower()
        if "no such object" in text:  # real GCS names the case
            return False
        if "bucket" in text:
            return True
        try:
            self._probe()
        except BucketNotFound:
            return True
        except StorageError:
            return False
        return False

    def _call(self, key: str | None, action: Callable[[], T]) -> T:
        """Run one library call, translating its failures."""
        try:
            return action()
        except EnigmaError:
            raise
        except Exception as exc:
            mapped = self._translate(exc, key)
            if mapped is None:
                raise
            raise mapped from exc

    # -- client ---------------------------------------------------------------------------

    @property
    def client(self) -> Client:
        """The client, built on first use (this is where the library is imported)."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._call(None, self._build_client)
                client = self._client
        return client

    @property
    def bucket(self) -> Bucket:
        self.client  # noqa: B018 - builds client and bucket
        assert self._bucket is not None
        return self._bucket

    def _credentials(self) -> tuple[Any, str | None]:
        """(credentials, project) from the first source that applies."""
        import google.auth
        from google.auth.credentials import AnonymousCredentials

        if self._service_account is not None:
            return _load_key(self._service_account, "'secret_key'")
        if self.credentials_file:
            try:
                with open(self.credentials_file, encoding="utf-8") as fh:
                    info = json.load(fh)
            except (OSError, ValueError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not JSON"
                raise ConfigError(f"Gcs storage 'credentials_file' {self.credentials_file}: "
                                  f"{reason}") from None
            return _load_key(info, f"'credentials_file' {self.credentials_file}")
        if self.endpoint_url:
            return AnonymousCredentials(), EMULATOR_PROJECT
        return google.auth.default(scopes=SCOPES)

    def _build_client(self) -> Client:
        import requests
        from google.cloud import storage
        from google.cloud.storage.retry import DEFAULT_RETRY

        credentials, found_project = self._credentials()
        options = {"api_endpoint": self.endpoint_url} if self.endpoint_url else None
        client = storage.Client(project=self.project or found_project,
                                credentials=credentials, client_options=options)
        # google-cloud-storage's documented way to widen the pool for many threads.
        adapter = requests.adapters.HTTPAdapter(pool_connections=4,
                                                pool_maxsize=self.max_connections)
        client._http.mount("https://", adapter)
        client._http.mount("http://", adapter)
        self._retry = DEFAULT_RETRY.with_delay(initial=0.2, maximum=1.0, multiplier=2.0) \
            .with_timeout(SDK_RETRY_SECONDS)
        self._bucket = client.bucket(self.bucket_name)
        return client

    def _blob(self, key: str, generation: int | None = None) -> Blob:
        return self.bucket.blob(self._name(key), generation=generation)

    # -- writes ---------------------------------------------------------------------------

    def put(self, key: str, data: bytes | memoryview) -> None:
        """One multipart upload up to 8 MiB, a resumable one above (atomic either way)."""
        blob = self._blob(key)
        body = io.BytesIO(data)
        size = memoryview(data).nbytes
        self._call(key, lambda: blob.upload_from_file(
            body, size=size, content_type="application/octet-stream",
            retry=self._retry, timeout=self.timeout))

    def put_stream(self, key: str, stream: BinaryIO) -> None:
        """A resumable upload sent in ``UPLOAD_CHUNK_SIZE`` chunks as they are read; the
        object appears only when the last chunk is in."""
        blob = self._blob(key)
        blob.chunk_size = UPLOAD_CHUNK_SIZE
        self._call(key, lambda: blob.upload_from_file(
            _UploadStream(stream), size=None, content_type="application/octet-stream",
            retry=self._retry, timeout=self.timeout))

    def delete(self, key: str) -> None:
        """Delete the object; a missing one is fine (a missing bucket is not)."""
        blob = self._blob(key)
        with contextlib.suppress(ObjectNotFound):
            self._call(key, lambda: blob.delete(retry=self._retry, timeout=self.timeout))

    # -- reads ----------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        blob = self._blob(key)
        return self._call(key, lambda: blob.download_as_bytes(retry=self._retry,
                                                              timeout=self.timeout))

    def _range(self, blob: Blob, key: str, offset: int, length: int) -> bytes:
        from google.api_core.exceptions import RequestRangeNotSatisfiable

        try:
            return self._call(key, lambda: blob.download_as_bytes(
                start=offset, end=offset + length - 1, retry=self._retry,
                timeout=self.timeout))
        except StorageError as exc:
            if isinstance(exc.__cause__, RequestRangeNotSatisfiable):
                return b""  # starts at or past the end
            raise

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """One ranged GET; a range starting at or past the end is empty."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must be >= 0")
        if length == 0:
            if not self.exists(key):
                raise ObjectNotFound(f"{self.where}: no such object {key}")
            return b""
        return self._range(self._blob(key), key, offset, length)

    def get_stream(self, key: str) -> BinaryIO:
        """Stream the object in ``STREAM_READ_SIZE`` ranges of one generation, so an
        overwrite during the read fails (transiently) instead of mixing two versions."""
        blob = self._blob(key)
        self._call(key, lambda: blob.reload(retry=self._retry, timeout=self.timeout))
        pinned = self._blob(key, generation=blob.generation)

        def fetch(offset: int, length: int) -> bytes:
            try:
                return self._range(pinned, key, offset, length)
            except ObjectNotFound as exc:
                raise TransientStorageError(f"{self.where}: object {key} changed while it "
                                            "was being read") from exc

        return range_stream(blob.size or 0, fetch, STREAM_READ_SIZE)

    def exists(self, key: str) -> bool:
        blob = self._blob(key)
        try:
            self._call(key, lambda: blob.reload(retry=self._retry, timeout=self.timeout))
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        """Every key under ``prefix``, page by page (``list_page_size`` names each)."""
        if not isinstance(prefix, str):
            raise StorageError(f"{self.where}: invalid prefix {prefix!r}")
        names = self._call(None, lambda: iter(self.client.list_blobs(
            self.bucket_name, prefix=self.prefix + prefix, page_size=self.list_page_size,
            fields="items(name),nextPageToken", retry=self._retry, timeout=self.timeout)))
        cut = len(self.prefix)
        while True:
            try:
                blob = self._call(None, lambda: next(names))
            except StopIteration:
                return
            yield blob.name[cut:]

    # -- lifecycle ------------------------------------------------------------------------

    def _probe(self) -> None:
        """List at most one name (needs only storage.objects.list, like everything else)."""
        self._call(None, lambda: next(iter(self.client.list_blobs(
            self.bucket_name, max_results=1, fields="items(name)", retry=self._retry,
            timeout=self.timeout)), None))

    def check(self) -> None:
        """Prove the endpoint answers, the credentials work and the bucket exists."""
        self._probe()

    def create_bucket(self) -> bool:
        """Create the bucket (in ``location``) if it is missing; True if this call did."""
        try:
            self._probe()
            return False
        except BucketNotFound:
            pass
        from google.api_core.exceptions import Conflict, Forbidden

        project = self.client.project
        if not project:
            raise StorageError(f"{self.where}: bucket does not exist and no project is known "
                               "to create it in (set 'project' or GOOGLE_CLOUD_PROJECT)")
        try:
            self._call(None, lambda: self.client.create_bucket(
                self.bucket_name, project=project, location=self.location,
                retry=self._retry, timeout=self.timeout))
        except StorageError as exc:
            if isinstance(exc.__cause__, Conflict):
                return False  # created meanwhile (a name taken elsewhere fails the probe)
            if isinstance(exc.__cause__, Forbidden):
                raise StorageError(f"{self.where}: bucket does not exist and these credentials "
                                   f"may not create it in project '{project}' (needs "
                                   "storage.buckets.create, e.g. roles/storage.admin)") from exc
            raise
        return True

    def close(self) -> None:
        """Close the client's connections; a later call opens new ones."""
        with self._lock:
            client, self._client, self._bucket = self._client, None, None
        if client is not None:
            client.close()


STORAGE_PROVIDERS = [GcsStorage]
