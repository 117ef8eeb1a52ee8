"""Azure Blob Storage as an Enigma storage provider (``type = "Azure"``).

Objects are block blobs in one container (``bucket``), optionally under a ``prefix``. The
Azure SDK is imported only when the first request is made, so ``enigma --help`` does not
pay for it. One ``BlobServiceClient`` (thread-safe) serves every thread, over a requests
session whose connection pool is sized to the core's concurrency (``max_connections``).

Retries: the core retries ``TransientStorageError`` with exponential backoff and jitter,
so the SDK's own policy (10 tries, 15 s base backoff: minutes against a dead server) is cut
to one quick retry, which covers a pooled keep-alive connection the server closed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
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
    from azure.storage.blob import BlobClient, BlobServiceClient, ContainerClient

__all__ = ["STORAGE_PROVIDERS", "AzureStorage", "ContainerNotFound"]

T = TypeVar("T")
MiB = 1024 * 1024

ACCOUNT_ENV = "AZURE_STORAGE_ACCOUNT"
KEY_ENV = "AZURE_STORAGE_KEY"
CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"

#: Objects up to this size go up in one Put Blob request: a whole chunk (at most 16 MiB
#: plus its header with the default chunker) is one round trip.
SINGLE_PUT_SIZE = 32 * MiB
#: Block size of ``put_stream`` (and of puts above ``SINGLE_PUT_SIZE``): the memory one
#: streamed upload holds per concurrent block.
BLOCK_SIZE = 8 * MiB
#: Blocks of one streamed upload sent at once.
STREAM_UPLOAD_CONCURRENCY = 2
#: Range size of ``get_stream`` reads.
STREAM_READ_SIZE = 4 * MiB
#: Names per List Blobs page (Azure's maximum; tests lower it to prove paging).
LIST_PAGE_SIZE = 5000

#: Container names: 3-63 lowercase letters, digits and single hyphens, alphanumeric ends.
_CONTAINER_NAME = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
#: Error codes that mean "try again later" whatever the status.
_TRANSIENT_CODES = {"ServerBusy", "OperationTimedOut", "InternalError", "ContainerBeingDeleted",
                    "TooManyRequests"}
_AUTH_CODES = {
    "AuthenticationFailed": "authentication failed (check the account name and key)",
    # Azurite's answer to a wrong key; real Azure's for network rules and bad SAS tokens.
    "AuthorizationFailure": "not authorized (check the account name and key, or the "
                            "account's network rules)",
    "InvalidAuthenticationInfo": "invalid authentication information (check the credentials)",
    "NoAuthenticationInformation": "the server wants credentials and none were sent",
    "AuthorizationPermissionMismatch": "access denied: the credentials lack permission",
    "InsufficientAccountPermissions": "access denied: the account lacks permission",
    "AccountIsDisabled": "the storage account is disabled",
}


class ContainerNotFound(StorageError):
    """The container does not exist (``enigma init`` creates it)."""


def _default_pool_size() -> int:
    """Connections to keep: the core's uploads (8 per provider), restore prefetch (2 per
    core) and streamed blocks, so no thread waits for or discards one."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(32, 2 * cpus + 16)


def _public_url(url: str) -> str:
    """A URL fit for messages: no ``user:pass@``, no query (a SAS token lives there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _network_reason(exc: BaseException) -> str:
    """``connection refused``, ``timed out``, ...: the cause without URLs (they may hold a
    SAS token) or the SDK's long chained text."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 12:
        seen.append(current)
        if isinstance(current, TimeoutError):
            return "timed out"
        if isinstance(current, OSError) and current.strerror:
            return current.strerror[:1].lower() + current.strerror[1:]
        current = (getattr(current, "inner_exception", None) or current.__cause__
                   or current.__context__)
    text = " ".join(str(e) for e in seen).lower()
    for needle, reason in (("timed out", "timed out"), ("timeout", "timed out"),
                           ("connection refused", "connection refused"),
                           ("name or service not known", "host not found"),
                           ("nodename nor servname", "host not found"),
                           ("getaddrinfo failed", "host not found"),
                           ("temporary failure in name resolution", "host not found"),
                           ("connection reset", "connection reset"),
                           ("connection aborted", "connection aborted"),
                           ("remote end closed", "connection closed by the server"),
                           ("certificate", "TLS certificate problem"),
                           ("ssl", "TLS error")):
        if needle in text:
            return reason
    return "connection failed"


def _error_code(exc: BaseException) -> str:
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


class _ReadOnly:
    """Hides ``seek``/``tell``/``fileno`` so the SDK streams a file in blocks instead of
    reading up to ``SINGLE_PUT_SIZE`` of it into memory first."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        return data if isinstance(data, bytes) else bytes(data or b"")


class AzureStorage(StorageProvider):
    """Block blobs in one Azure Storage container; see the plugin README for options."""

    name = "azure"
    description = "Azure Blob Storage (a container in a storage account)"

    #: Names per listing page; an attribute so tests can force many pages.
    list_page_size: int = LIST_PAGE_SIZE

    def __init__(
        self,
        *,
        bucket: str,
        access_key: str | None = None,
        secret_key: str | None = None,
        connection_string: str | None = None,
        endpoint_url: str | None = None,
        prefix: str = "",
        max_connections: int | None = None,
        connect_timeout: float = 10,
        read_timeout: float = 60,
        region: str | None = None,
        path_style: bool | None = None,
    ) -> None:
        # ``region``/``path_style`` are S3 notions the seed config gives every provider.
        del region, path_style
        if not isinstance(bucket, str) or not _CONTAINER_NAME.match(bucket):
            raise ConfigError("Azure storage 'bucket' must be a container name: 3-63 lowercase "
                              "letters, digits and single hyphens, starting and ending with a "
                              "letter or digit")
        self.container = bucket
        for option, value in (("access_key", access_key), ("secret_key", secret_key),
                              ("connection_string", connection_string),
                              ("endpoint_url", endpoint_url), ("prefix", prefix)):
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"Azure storage '{option}' must be a string")
        if endpoint_url and urlsplit(endpoint_url).scheme not in ("http", "https"):
            raise ConfigError("Azure storage 'endpoint_url' must look like "
                              "https://ACCOUNT.blob.core.windows.net or "
                              "http://127.0.0.1:10000/devstoreaccount1")
        self.endpoint_url = endpoint_url.rstrip("/") if endpoint_url else None
        prefix = (prefix or "").strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        if max_connections is None:
            max_connections = _default_pool_size()
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) \
                or max_connections < 1:
            raise ConfigError("Azure storage 'max_connections' must be a positive integer")
        self.max_connections = max_connections
        for option, value in (("connect_timeout", connect_timeout),
                              ("read_timeout", read_timeout)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"Azure storage '{option}' must be a positive number of "
                                  "seconds")
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)

        self.account_name: str | None = None
        self._account_key: str | None = None
        self._connection_string: str | None = None
        self.credential_source = self._resolve_credentials(access_key, secret_key,
                                                           connection_string)
        self._lock = threading.Lock()
        self._service: BlobServiceClient | None = None
        self._client: ContainerClient | None = None
        self._session: Any = None
        self._endpoint = self.endpoint_url or (
            f"https://{self.account_name}.blob.core.windows.net" if self.account_name else "")

    def _resolve_credentials(self, access_key: str | None, secret_key: str | None,
                             connection_string: str | None) -> str:
        """Pick the credentials, in the documented order; say which (never the secret)."""
        env = os.environ
        if access_key or secret_key:
            account = access_key or env.get(ACCOUNT_ENV)
            key = secret_key or env.get(KEY_ENV)
            if not account or not key:
                raise ConfigError("Azure storage needs both 'access_key' (the account name) "
                                  f"and 'secret_key' (the account key), or {ACCOUNT_ENV}/"
                                  f"{KEY_ENV} for the one left out")
            source = "config"
        elif connection_string:
            self._connection_string = connection_string
            return "config connection_string"
        elif env.get(ACCOUNT_ENV) and env.get(KEY_ENV):
            account, key, source = env[ACCOUNT_ENV], env[KEY_ENV], f"{ACCOUNT_ENV}/{KEY_ENV}"
        elif env.get(CONNECTION_STRING_ENV):
            self._connection_string = env[CONNECTION_STRING_ENV]
            return CONNECTION_STRING_ENV
        else:
            raise ConfigError("Azure storage has no credentials: set 'access_key' (account "
                              "name) and 'secret_key' (account key), or the environment "
                              f"variables {ACCOUNT_ENV} and {KEY_ENV}, or "
                              f"{CONNECTION_STRING_ENV}")
        try:
            base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            where = "'secret_key'" if source == "config" else KEY_ENV
            raise ConfigError(f"Azure storage {where} is not an account key (base64 text "
                              "from the portal's 'Access keys' page)") from None
        self.account_name, self._account_key = account, key
        return source

    # -- naming and errors ------------------------------------------------------------------

    @property
    def where(self) -> str:
        """How messages name this provider: container, prefix and endpoint (no secrets)."""
        text = f"azure container '{self.container}'"
        if self.prefix:
            text += f" prefix '{self.prefix}'"
        if self._endpoint:
            text += f" at {_public_url(self._endpoint)}"
        return text

    def __repr__(self) -> str:
        return (f"AzureStorage(container={self.container!r}, "
                f"endpoint={_public_url(self._endpoint) if self._endpoint else ''!r})")

    def _name(self, key: str) -> str:
        if not isinstance(key, str) or not key or key.startswith("/"):
            raise StorageError(f"{self.where}: invalid object key {key!r}")
        return self.prefix + key

    def _translate(self, exc: BaseException, key: str | None) -> StorageError | None:
        """Map an SDK/network failure to the core's errors, one line, no secrets.

        Returns None for exceptions that are not storage failures (programming errors),
        which the caller re-raises unchanged.
        """
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            IncompleteReadError,
            ServiceRequestError,
            ServiceResponseError,
        )

        obj = f" (object {key})" if key else ""
        endpoint = _public_url(self._endpoint) if self._endpoint else "the endpoint"
        if isinstance(exc, ServiceRequestError):
            return TransientStorageError(f"{self.where}: cannot connect to {endpoint}: "
                                         f"{_network_reason(exc)}")
        if isinstance(exc, ServiceResponseError | IncompleteReadError):
            return TransientStorageError(f"{self.where}: connection to {endpoint} failed{obj}: "
                                         f"{_network_reason(exc)}")
        if isinstance(exc, HttpResponseError):
            status = exc.status_code or 0
            code = _error_code(exc)
            detail = f"HTTP {status}" + (f" {code}" if code else "")
            if status == 412 or code == "ConditionNotMet":  # get_stream's ETag pin
                return TransientStorageError(f"{self.where}: object changed while it was "
                                             f"being read{obj}")
            if status in (408, 429) or status >= 500 or code in _TRANSIENT_CODES:
                return TransientStorageError(f"{self.where}: server busy or failing{obj} "
                                             f"({detail})")
            if code in _AUTH_CODES:
                return StorageError(f"{self.where}: {_AUTH_CODES[code]}")
            if status == 401 or isinstance(exc, ClientAuthenticationError):
                return StorageError(f"{self.where}: authentication failed ({detail}); check "
                                    "the account name and key")
            if status == 403:
                return StorageError(f"{self.where}: access denied{obj} ({detail})")
            if code == "ContainerNotFound":
                return ContainerNotFound(f"{self.where}: container does not exist (create it "
                                         "with: enigma init)")
            if code == "BlobNotFound" and key:
                return ObjectNotFound(f"{self.where}: no such object {key}")
            if code == "ResourceNotFound" or (status == 404 and not key):
                return StorageError(f"{self.where}: storage account or endpoint not found "
                                    f"({detail}); check the account name and endpoint_url")
            if code in ("InvalidResourceName", "OutOfRangeInput"):
                return StorageError(f"{self.where}: invalid container or object name{obj}")
            return StorageError(f"{self.where}: request failed{obj} ({detail})")
        if isinstance(exc, ConnectionError | TimeoutError):
            return TransientStorageError(f"{self.where}: connection to {endpoint} failed{obj}: "
                                         f"{_network_reason(exc)}")
        try:
            import requests
        except ImportError:  # pragma: no cover - azure-core depends on requests
            return None
        if isinstance(exc, requests.RequestException):
            return TransientStorageError(f"{self.where}: connection to {endpoint} failed{obj}: "
                                         f"{_network_reason(exc)}")
        return None

    def _call(self, key: str | None, action: Callable[[], T]) -> T:
        """Run one SDK call, translating its failures."""
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
    def client(self) -> ContainerClient:
        """The container client, built on first use (this is where the SDK is imported)."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._build_client()
                client = self._client
        return client

    def _build_client(self) -> ContainerClient:
        import requests
        from azure.core.credentials import AzureNamedKeyCredential
        from azure.core.pipeline.transport import RequestsTransport
        from azure.storage.blob import BlobServiceClient, LinearRetry

        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4,
                                                pool_maxsize=self.max_connections)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        options: dict[str, Any] = {
            "transport": RequestsTransport(session=session, session_owner=False),
            # One retry after ~0.25 s (a stale keep-alive connection); the core does the rest.
            "retry_policy": LinearRetry(backoff=0.25, random_jitter_range=0.25, retry_total=1,
                                        retry_to_secondary=False),
            "connection_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            "max_single_put_size": SINGLE_PUT_SIZE,
            "max_block_size": BLOCK_SIZE,
        }
        try:
            if self._connection_string is not None:
                service = BlobServiceClient.from_connection_string(self._connection_string,
                                                                   **options)
                if self.endpoint_url:  # keep the string's credential (or its SAS query)
                    query = urlsplit(service.url).query
                    url = self.endpoint_url + (f"?{query}" if query else "")
                    service = BlobServiceClient(url, credential=service.credential, **options)
                self.account_name = service.account_name
                self._endpoint = _public_url(service.url)
            else:
                credential = AzureNamedKeyCredential(self.account_name or "",
                                                     self._account_key or "")
                service = BlobServiceClient(self._endpoint, credential=credential, **options)
        except ValueError:
            session.close()
            # The SDK's message may quote the connection string: name the source only.
            raise ConfigError(f"Azure storage: {self.credential_source} is not a valid storage "
                              "connection string") from None
        self._session, self._service = session, service
        return service.get_container_client(self.container)

    def _blob(self, key: str) -> BlobClient:
        return self.client.get_blob_client(self._name(key))

    # -- writes ---------------------------------------------------------------------------

    def put(self, key: str, data: bytes | memoryview) -> None:
        """One Put Blob up to ``SINGLE_PUT_SIZE``; above, blocks and one atomic commit."""
        body = bytes(data) if not isinstance(data, bytes) else data
        blob = self._blob(key)
        self._call(key, lambda: blob.upload_blob(body, length=len(body), overwrite=True,
                                                 max_concurrency=1))

    def put_stream(self, key: str, stream: BinaryIO) -> None:
        """Upload ``BLOCK_SIZE`` blocks as they are read, then commit the block list (atomic)."""
        blob = self._blob(key)
        self._call(key, lambda: blob.upload_blob(
            _ReadOnly(stream), overwrite=True, max_concurrency=STREAM_UPLOAD_CONCURRENCY))

    def delete(self, key: str) -> None:
        """Delete the blob (and any snapshots); a missing blob is fine."""
        blob = self._blob(key)
        with contextlib.suppress(ObjectNotFound):
            self._call(key, lambda: blob.delete_blob(delete_snapshots="include"))

    # -- reads ----------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        blob = self._blob(key)
        return self._call(key, lambda: blob.download_blob(max_concurrency=1).readall())

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """One ranged GET; a range starting at or past the end is empty."""
        if offset < 0 or length < 0:
            raise ValueError("offset and length must be >= 0")
        if length == 0:
            if not self.exists(key):
                raise ObjectNotFound(f"{self.where}: no such object {key}")
            return b""
        blob = self._blob(key)
        try:
            return self._call(key, lambda: blob.download_blob(
                offset=offset, length=length, max_concurrency=1).readall())
        except StorageError as exc:
            if getattr(exc.__cause__, "status_code", None) == 416:  # starts past the end
                return b""
            raise

    def get_stream(self, key: str) -> BinaryIO:
        """Stream the blob in ``STREAM_READ_SIZE`` ranges, pinned to its ETag so an
        overwrite during the read fails (transiently) instead of mixing two versions."""
        from azure.core import MatchConditions

        blob = self._blob(key)
        props = self._call(key, blob.get_blob_properties)
        etag = props.etag

        def fetch(offset: int, length: int) -> bytes:
            return self._call(key, lambda: blob.download_blob(
                offset=offset, length=length, max_concurrency=1, etag=etag,
                match_condition=MatchConditions.IfNotModified).readall())

        return range_stream(props.size, fetch, STREAM_READ_SIZE)

    def exists(self, key: str) -> bool:
        blob = self._blob(key)
        try:
            self._call(key, blob.get_blob_properties)
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        """Every key under ``prefix``, page by page (``list_page_size`` names each)."""
        if not isinstance(prefix, str):
            raise StorageError(f"{self.where}: invalid prefix {prefix!r}")
        pages = self._call(None, lambda: self.client.list_blob_names(
            name_starts_with=self.prefix + prefix, results_per_page=self.list_page_size))
        names = iter(pages)
        cut = len(self.prefix)
        while True:
            try:
                name = self._call(None, lambda: next(names))
            except StopIteration:
                return
            yield name[cut:]

    # -- lifecycle ------------------------------------------------------------------------

    def check(self) -> None:
        """List one name: proves the endpoint answers, the key signs, the container exists."""
        self._call(None, lambda: next(iter(self.client.list_blob_names(results_per_page=1)),
                                      None))

    def create_bucket(self) -> bool:
        """Create the container if it is missing; True if this call created it."""
        try:
            self.check()
            return False
        except ContainerNotFound:
            pass
        client = self.client
        try:
            client.create_container()
        except Exception as exc:
            if _error_code(exc) == "ContainerAlreadyExists":
                return False  # created meanwhile by someone else
            mapped = self._translate(exc, None)
            if mapped is None:
                raise
            if getattr(exc, "status_code", None) in (401, 403):
                # check() just listed with these credentials, so this is a permission gap.
                code = _error_code(exc) or "HTTP 403"
                raise StorageError(f"{self.where}: container does not exist and these "
                                   f"credentials may not create it ({code}); create it in the "
                                   "portal or use the account key") from exc
            raise mapped from exc
        return True

    def close(self) -> None:
        """Close the client and its connections; a later call opens new ones."""
        with self._lock:
            service, session = self._service, self._session
            self._client = self._service = self._session = None
        if service is not None:
            service.close()
        if session is not None:
            session.close()


STORAGE_PROVIDERS = [AzureStorage]
