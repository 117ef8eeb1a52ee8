"""``aws-secretsmanager``: the key material as secrets in AWS Secrets Manager.

Credentials come from boto3's default chain (environment, ``AWS_PROFILE`` and the shared
config files, SSO, web identity, container and instance roles).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from enigma.errors import AuthError, ConfigError, EnigmaError, StorageError
from enigma_keys_vault.base import (
    DESCRIPTION,
    OWNER_TAG,
    SecretExists,
    VaultKeyProvider,
    missing_sdk,
    one_line,
)

#: Error codes that mean "who you are" or "what you may do" is the problem.
AUTH_CODES = {
    "AccessDeniedException", "AccessDenied", "UnrecognizedClientException",
    "InvalidSignatureException", "ExpiredTokenException", "IncompleteSignature",
    "InvalidClientTokenId", "DecryptionFailure", "KMSAccessDeniedException",
}


class AwsSecretsManagerKeyProvider(VaultKeyProvider):
    """Keys in Secrets Manager secrets; needs GetSecretValue, CreateSecret, PutSecretValue."""

    name: ClassVar[str] = "aws-secretsmanager"
    description: ClassVar[str] = "key material in AWS Secrets Manager secrets (no passphrase)"
    name_pattern: ClassVar[str] = r"[0-9A-Za-z/_+=.@-]"
    max_name_length: ClassVar[int] = 512

    def __init__(self, *, aws_region: str, secret_prefix: str = "enigma-",
                 config_dir: str | None = None, endpoint_url: str | None = None) -> None:
        super().__init__(secret_prefix=secret_prefix, config_dir=config_dir)
        if not isinstance(aws_region, str) or not aws_region.strip():
            raise ConfigError(f"aws_region {aws_region!r} must be a region such as 'eu-west-1'")
        if endpoint_url is not None and (not isinstance(endpoint_url, str) or not endpoint_url):
            raise ConfigError("endpoint_url must be a URL such as "
                              "https://secretsmanager.eu-west-1.amazonaws.com")
        self.region = aws_region.strip()
        self.endpoint_url = endpoint_url or None
        self._client: Any = None

    @property
    def location(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"AWS Secrets Manager {self.region}{where}"

    def _secrets(self) -> Any:
        """The boto3 client, built on first use (the SDK is optional)."""
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise missing_sdk(self.name, "the AWS SDK (boto3)", "aws") from None
            config = Config(connect_timeout=5, read_timeout=30,
                            retries={"total_max_attempts": 3, "mode": "standard"})
            with self._errors("connect"):
                session = boto3.session.Session(region_name=self.region)
                self._client = session.client("secretsmanager", endpoint_url=self.endpoint_url,
                                              config=config)
        return self._client

    # -- storage primitives -------------------------------------------------------------------

    def _read(self, name: str, version: str | None) -> tuple[str, str] | None:
        client = self._secrets()
        args = {"SecretId": name, **({"VersionId": version} if version else {})}
        with self._errors(f"read secret '{name}'", missing_ok=True) as missing:
            response = client.get_secret_value(**args)
        if missing:
            return None
        return response.get("SecretString", ""), response["VersionId"]

    def _create(self, name: str, value: str) -> str:
        client = self._secrets()
        with self._errors(f"create secret '{name}'", exists_ok=True) as exists:
            response = client.create_secret(
                Name=name, SecretString=value, Description=DESCRIPTION,
                Tags=[{"Key": OWNER_TAG[0], "Value": OWNER_TAG[1]}])
        if exists:
            raise SecretExists(name)
        return str(response["VersionId"])

    def _write(self, name: str, value: str) -> str:
        client = self._secrets()
        with self._errors(f"write secret '{name}'", missing_ok=True) as missing:
            response = client.put_secret_value(SecretId=name, SecretString=value)
        if missing:
            return self._create(name, value)
        return str(response["VersionId"])

    @contextmanager
    def _errors(self, action: str, *, missing_ok: bool = False,
                exists_ok: bool = False) -> Iterator[list[bool]]:
        """Turn boto errors into one-line Enigma errors; a tolerated "missing" or "exists"
        sets the yielded flag instead (``if flag:``)."""
        from botocore import exceptions as boto

        where = f"{self.name}: cannot {action} in {self.location}"
        flag: list[bool] = []
        try:
            yield flag
        except EnigmaError:
            raise
        except boto.ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            message = one_line(error.get("Message") or exc)
            if code == "ResourceNotFoundException" and missing_ok:
                flag.append(True)
                return
            if code == "ResourceExistsException" and exists_ok:
                flag.append(True)
                return
            if code in AUTH_CODES:
                raise AuthError(f"{where}: {code}: {message}; check the AWS credentials and "
                                "that the IAM policy allows secretsmanager:GetSecretValue, "
                                "CreateSecret and PutSecretValue") from None
            if code == "InvalidRequestException":  # e.g. scheduled for deletion
                raise ConfigError(f"{where}: {message}") from None
            raise StorageError(f"{where}: {code or 'error'}: {message}") from None
        except (boto.NoCredentialsError, boto.PartialCredentialsError,
                boto.CredentialRetrievalError, boto.ProfileNotFound) as exc:
            raise AuthError(f"{self.name}: no usable AWS credentials ({one_line(exc)}); set "
                            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or run "
                            "with an IAM role") from None
        except (boto.EndpointConnectionError, boto.ConnectTimeoutError,
                boto.ReadTimeoutError, boto.ConnectionClosedError) as exc:
            raise StorageError(f"{where}: Secrets Manager unreachable ({one_line(exc)}); "
                               "check aws_region, endpoint_url and the network") from None
        except boto.BotoCoreError as exc:
            raise StorageError(f"{where}: {one_line(exc)}") from None
