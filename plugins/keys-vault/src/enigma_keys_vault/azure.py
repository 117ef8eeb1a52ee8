"""``azure-keyvault``: the key material as secrets in an Azure Key Vault.

Credentials come from ``DefaultAzureCredential`` (environment, workload identity, managed
identity, Azure CLI, ...), unless an embedding program sets ``provider.credential``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar
from urllib.parse import urlparse

from enigma.errors import AuthError, ConfigError, EnigmaError, StorageError
from enigma_keys_vault.base import (
    OWNER_TAG,
    SecretExists,
    VaultKeyProvider,
    missing_sdk,
    one_line,
)

#: Fail fast when the vault is unreachable (the SDK default retries 10 times).
CLIENT_OPTIONS: dict[str, Any] = {
    "retry_total": 3, "retry_backoff_factor": 0.4, "retry_backoff_max": 4,
    "connection_timeout": 10, "read_timeout": 30,
}
CONTENT_TYPE = "application/vnd.enigma.key+base64"


class AzureKeyVaultKeyProvider(VaultKeyProvider):
    """Keys in Azure Key Vault secrets; needs the secrets get and set permissions."""

    name: ClassVar[str] = "azure-keyvault"
    description: ClassVar[str] = "key material in Azure Key Vault secrets (no passphrase)"
    name_pattern: ClassVar[str] = r"[0-9A-Za-z-]"
    max_name_length: ClassVar[int] = 127

    def __init__(self, *, vault_url: str, secret_prefix: str = "enigma-",
                 config_dir: str | None = None, verify_challenge_resource: bool = True) -> None:
        super().__init__(secret_prefix=secret_prefix, config_dir=config_dir)
        parsed = urlparse(vault_url) if isinstance(vault_url, str) else None
        if not parsed or parsed.scheme != "https" or not parsed.hostname or \
                parsed.path.strip("/") or parsed.query:
            raise ConfigError(f"vault_url {vault_url!r} must look like "
                              "https://<vault-name>.vault.azure.net")
        if not isinstance(verify_challenge_resource, bool):
            raise ConfigError("verify_challenge_resource must be true or false")
        self.vault_url = vault_url.rstrip("/")
        self.verify_challenge_resource = verify_challenge_resource
        #: Any ``azure.core`` token credential; None means ``DefaultAzureCredential()``.
        self.credential: Any = None
        self._client: Any = None

    @property
    def location(self) -> str:
        return f"Azure Key Vault {self.vault_url}"

    def _secrets(self) -> Any:
        """The SecretClient, built on first use so a missing SDK only matters when used."""
        if self._client is None:
            try:
                from azure.identity import DefaultAzureCredential
                from azure.keyvault.secrets import SecretClient
            except ImportError:
                raise missing_sdk(self.name, "the Azure SDK", "azure") from None
            credential = self.credential
            if credential is None:
                credential = DefaultAzureCredential()
            self._client = SecretClient(
                self.vault_url, credential,
                verify_challenge_resource=self.verify_challenge_resource, **CLIENT_OPTIONS)
        return self._client

    # -- storage primitives -------------------------------------------------------------------

    def _read(self, name: str, version: str | None) -> tuple[str, str] | None:
        client = self._secrets()
        from azure.core.exceptions import ResourceNotFoundError

        with self._errors(f"read secret '{name}'"):
            try:
                secret = client.get_secret(name, version)
            except ResourceNotFoundError:
                return None
        return secret.value or "", str(secret.properties.version)

    def _create(self, name: str, value: str) -> str:
        # Key Vault has no create-if-absent; init is one process, so check-then-set will do.
        if self._read(name, None) is not None:
            raise SecretExists(name)
        return self._write(name, value)

    def _write(self, name: str, value: str) -> str:
        client = self._secrets()
        with self._errors(f"write secret '{name}'"):
            secret = client.set_secret(name, value, content_type=CONTENT_TYPE,
                                       tags=dict([OWNER_TAG]))
        return str(secret.properties.version)

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn Azure SDK exceptions into one-line Enigma errors that say what to do."""
        from azure.core.exceptions import (
            AzureError,
            ClientAuthenticationError,
            HttpResponseError,
            ServiceRequestError,
            ServiceResponseError,
        )

        where = f"{self.name}: cannot {action} in {self.location}"
        try:
            yield
        except EnigmaError:
            raise
        except ClientAuthenticationError as exc:  # also: no credential found at all
            raise AuthError(
                f"{where}: not authenticated ({one_line(exc)}); sign in with 'az login', set "
                "AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET, or use a managed "
                "identity") from None
        except HttpResponseError as exc:
            status = exc.status_code
            message = one_line(getattr(exc, "message", None) or exc)
            if status == 403:
                raise AuthError(f"{where}: access denied ({message}); give this identity the "
                                "'Key Vault Secrets Officer' role or secrets get/set/list "
                                "permissions") from None
            if status == 409:
                raise ConfigError(f"{where}: {message} (recover or purge the deleted secret, "
                                  "or choose another secret_prefix)") from None
            raise StorageError(f"{where}: HTTP {status}: {message}") from None
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise StorageError(f"{where}: vault unreachable ({one_line(exc)}); check vault_url "
                               "and the network") from None
        except AzureError as exc:
            raise StorageError(f"{where}: {one_line(exc)}") from None
        except ValueError as exc:  # e.g. the challenge names a resource the URL does not match
            raise ConfigError(f"{where}: {one_line(exc)}") from None
