"""``gcp-secretmanager``: the key material as secrets in Google Cloud Secret Manager.

Credentials come from Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``,
``gcloud auth application-default login``, the metadata server), unless an embedding
program sets ``provider.credentials``. The client speaks Secret Manager's REST API
(``transport="rest"``): no gRPC channel to set up for the handful of calls a command makes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import cache
from typing import Any, ClassVar

from enigma.errors import AuthError, ConfigError, EnigmaError, IntegrityError, StorageError
from enigma_keys_vault.base import (
    OWNER_TAG,
    SecretExists,
    VaultKeyProvider,
    missing_sdk,
    one_line,
)

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
#: Per-call deadline and retry budget, so an unreachable endpoint fails within seconds.
TIMEOUT = 30.0
RETRY_BUDGET = 6.0


@cache
def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), what Secret Manager uses to check payloads end to end."""
    table = _crc32c_table()
    crc = 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _message(exc: Exception) -> str:
    """The service's own error message, without the method and URL the SDK prepends."""
    response = getattr(exc, "response", None)
    try:
        return one_line(response.json()["error"]["message"])  # type: ignore[union-attr]
    except (AttributeError, ValueError, KeyError, TypeError):
        return one_line(exc)


class GcpSecretManagerKeyProvider(VaultKeyProvider):
    """Keys in Secret Manager secrets; needs roles/secretmanager.admin (or secretAccessor
    plus create/addVersion) on the project."""

    name: ClassVar[str] = "gcp-secretmanager"
    description: ClassVar[str] = "key material in GCP Secret Manager secrets (no passphrase)"
    name_pattern: ClassVar[str] = r"[0-9A-Za-z_-]"
    max_name_length: ClassVar[int] = 255

    def __init__(self, *, gcp_project_id: str, secret_prefix: str = "enigma-",
                 config_dir: str | None = None, endpoint_url: str | None = None) -> None:
        super().__init__(secret_prefix=secret_prefix, config_dir=config_dir)
        if not isinstance(gcp_project_id, str) or not gcp_project_id.strip() or \
                "/" in gcp_project_id:
            raise ConfigError(f"gcp_project_id {gcp_project_id!r} must be a project id "
                              "such as 'my-project'")
        if endpoint_url is not None and (not isinstance(endpoint_url, str) or not endpoint_url):
            raise ConfigError("endpoint_url must be a URL such as https://secretmanager.googleapis.com")
        self.project = gcp_project_id.strip()
        self.endpoint_url = endpoint_url.rstrip("/") if endpoint_url else None
        #: Any ``google.auth`` credentials; None means Application Default Credentials.
        self.credentials: Any = None
        self._client: Any = None

    @property
    def location(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"GCP Secret Manager project '{self.project}'{where}"

    def _secrets(self) -> Any:
        """The SecretManagerServiceClient, built on first use (the SDK is optional)."""
        if self._client is None:
            try:
                import google.auth
                import google.auth.exceptions
                from google.cloud.secretmanager import SecretManagerServiceClient
            except ImportError:
                raise missing_sdk(self.name, "the Google Cloud SDK", "gcp") from None
            credentials = self.credentials
            if credentials is None:
                try:
                    credentials, _ = google.auth.default(scopes=SCOPES)
                except google.auth.exceptions.DefaultCredentialsError:
                    raise AuthError(
                        f"{self.name}: no Google credentials found; run 'gcloud auth "
                        "application-default login' or set GOOGLE_APPLICATION_CREDENTIALS to a "
                        "service account key file") from None
            options = {"api_endpoint": self.endpoint_url} if self.endpoint_url else None
            self._client = SecretManagerServiceClient(
                credentials=credentials, transport="rest", client_options=options)
        return self._client

    def _call_options(self) -> dict[str, Any]:
        from google.api_core.retry import Retry, if_transient_error

        return {"retry": Retry(predicate=if_transient_error, initial=0.25, maximum=2.0,
                               multiplier=2.0, timeout=RETRY_BUDGET),
                "timeout": TIMEOUT}

    def _path(self, name: str) -> str:
        return f"projects/{self.project}/secrets/{name}"

    # -- storage primitives -------------------------------------------------------------------

    def _read(self, name: str, version: str | None) -> tuple[str, str] | None:
        client = self._secrets()
        from google.api_core.exceptions import NotFound

        with self._errors(f"read secret '{name}'"):
            try:
                response = client.access_secret_version(
                    name=f"{self._path(name)}/versions/{version or 'latest'}",
                    **self._call_options())
            except NotFound:
                return None
        payload = response.payload
        if "data_crc32c" in payload and payload.data_crc32c != crc32c(payload.data):
            raise IntegrityError(f"{self.name}: secret '{name}' in {self.location} failed its "
                                 "CRC32C check (corrupted in transit?); try again")
        try:
            value = payload.data.decode("utf-8")
        except UnicodeDecodeError:
            value = ""  # not ours: the caller reports it as not a key
        return value, response.name.rsplit("/", 1)[-1]

    def _create(self, name: str, value: str) -> str:
        from google.api_core.exceptions import Conflict

        try:
            self._create_secret(name)
        except Conflict:  # ALREADY_EXISTS: HTTP 409 (the REST transport raises Conflict)
            # A secret with no version is what an interrupted create leaves: finish it.
            if self._read(name, None) is not None:
                raise SecretExists(name) from None
        return self._add_version(name, value)

    def _write(self, name: str, value: str) -> str:
        from google.api_core.exceptions import Conflict, NotFound

        try:
            return self._add_version(name, value, missing_ok=False)
        except NotFound:
            pass
        with suppress(Conflict):  # created meanwhile: adding a version is still right
            self._create_secret(name)
        return self._add_version(name, value)

    def _create_secret(self, name: str) -> None:
        """Create an empty secret (automatic replication); ``Conflict`` (exists) passes through."""
        from google.api_core.exceptions import Conflict

        client = self._secrets()
        with self._errors(f"create secret '{name}'", passthrough=(Conflict,)):
            client.create_secret(
                request={"parent": f"projects/{self.project}", "secret_id": name,
                         "secret": {"replication": {"automatic": {}},
                                    "labels": dict([OWNER_TAG])}},
                **self._call_options())

    def _add_version(self, name: str, value: str, missing_ok: bool = True) -> str:
        """Add a version; with ``missing_ok=False`` a missing secret raises ``NotFound``."""
        from google.api_core.exceptions import NotFound

        client = self._secrets()
        data = value.encode("utf-8")
        with self._errors(f"write secret '{name}'", passthrough=() if missing_ok else (NotFound,)):
            version = client.add_secret_version(
                request={"parent": self._path(name),
                         "payload": {"data": data, "data_crc32c": crc32c(data)}},
                **self._call_options())
        return version.name.rsplit("/", 1)[-1]

    @contextmanager
    def _errors(self, action: str, passthrough: tuple[type[BaseException], ...] = ()
                ) -> Iterator[None]:
        """Turn Google SDK exceptions into one-line Enigma errors that say what to do."""
        import google.auth.exceptions as auth_errors
        import requests
        from google.api_core import exceptions as api_errors

        where = f"{self.name}: cannot {action} in {self.location}"
        try:
            yield
        except EnigmaError:
            raise
        except passthrough:
            raise
        except (api_errors.Unauthorized, auth_errors.GoogleAuthError) as exc:
            raise AuthError(f"{where}: not authenticated ({_message(exc)}); check the "
                            "Application Default Credentials") from None
        except api_errors.Forbidden as exc:  # PERMISSION_DENIED arrives as HTTP 403
            raise AuthError(f"{where}: permission denied ({_message(exc)}); grant this "
                            "identity roles/secretmanager.admin on the project, and check that "
                            "the Secret Manager API is enabled") from None
        except api_errors.NotFound as exc:
            raise ConfigError(f"{where}: {_message(exc)}; check gcp_project_id") from None
        except api_errors.RetryError as exc:
            cause = exc.cause if exc.cause is not None else exc
            raise StorageError(f"{where}: Secret Manager unreachable ({one_line(cause)}); "
                               "check the network and endpoint_url") from None
        except api_errors.GoogleAPICallError as exc:
            raise StorageError(f"{where}: {_message(exc)}") from None
        except requests.exceptions.RequestException as exc:
            raise StorageError(f"{where}: Secret Manager unreachable ({one_line(exc)}); "
                               "check the network and endpoint_url") from None
        except api_errors.GoogleAPIError as exc:
            raise StorageError(f"{where}: {one_line(exc)}") from None
