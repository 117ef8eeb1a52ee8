"""Azure-specific behaviour against a real Azurite: discovery, credentials, failures."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from enigma_storage_azure.provider import AzureStorage, ContainerNotFound
from servers import free_port
from servers.azurite import ACCOUNT_KEY, ACCOUNT_NAME, AzuriteServer

from enigma.errors import ConfigError, ObjectNotFound, StorageError, TransientStorageError
from enigma.plugin_manager import PluginManager

WRONG_KEY = base64.b64encode(b"not the devstoreaccount1 key, but valid base64!!").decode()


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    assert ACCOUNT_KEY not in text and WRONG_KEY not in text, "a secret leaked into a message"
    return text


def test_type_resolves_through_the_entry_point() -> None:
    manager = PluginManager()
    assert manager.get("storage", "Azure") is AzureStorage
    assert manager.get("storage", "azure") is AzureStorage
    info = {d.name: d for d in manager.describe()}["enigma-storage-azure"]
    assert info.provides == {"storage": ["azure"]} and not info.errors


def test_sdk_is_imported_lazily() -> None:
    """Loading every plugin (what `enigma plugins` does) must not import the Azure SDK."""
    code = ("import sys; from enigma.plugin_manager import PluginManager; "
            "PluginManager().get('storage', 'Azure'); "
            "print([m for m in sys.modules if m.startswith(('azure.storage', 'azure.core'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
    timing = subprocess.run([sys.executable, "-X", "importtime", "-c", code],
                            capture_output=True, text=True, check=True).stderr
    assert "azure.storage.blob" not in timing


def test_put_get_through_account_and_key(azurite: AzuriteServer, container_name: str,
                                         clean_env: pytest.MonkeyPatch) -> None:
    storage = AzureStorage(**azurite.provider_options(container_name, region="us-east-1",
                                                      path_style=True))
    assert storage.create_bucket() is True
    assert storage.create_bucket() is False  # idempotent
    storage.put("meta/x", b"payload")
    assert azurite.service_client().get_blob_client(container_name, "meta/x") \
        .download_blob().readall() == b"payload"
    assert storage.credential_source == "config"
    storage.close()
    assert storage.get("meta/x") == b"payload"  # reopens after close
    storage.close()


def test_connection_string_from_environment(azurite: AzuriteServer, container_name: str,
                                            clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    storage = AzureStorage(bucket=container_name)
    assert storage.credential_source == "AZURE_STORAGE_CONNECTION_STRING"
    assert storage.create_bucket() is True
    storage.put("meta/cs", b"via connection string")
    assert storage.get("meta/cs") == b"via connection string"
    assert azurite.endpoint_url in storage.where
    # endpoint_url overrides the string's blob endpoint.
    dead = f"http://127.0.0.1:{free_port()}/{ACCOUNT_NAME}"
    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING",
                     azurite.connection_string.replace(azurite.endpoint_url, dead))
    override = AzureStorage(bucket=container_name, endpoint_url=azurite.endpoint_url)
    assert override.get("meta/cs") == b"via connection string"


def test_account_and_key_from_environment(azurite: AzuriteServer, container_name: str,
                                          clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AZURE_STORAGE_ACCOUNT", ACCOUNT_NAME)
    clean_env.setenv("AZURE_STORAGE_KEY", ACCOUNT_KEY)
    storage = AzureStorage(bucket=container_name, endpoint_url=azurite.endpoint_url)
    assert storage.credential_source == "AZURE_STORAGE_ACCOUNT/AZURE_STORAGE_KEY"
    storage.create_bucket()
    storage.put("meta/env", b"env")
    # The account name in config, the key from the environment.
    assert AzureStorage(bucket=container_name, endpoint_url=azurite.endpoint_url,
                        access_key=ACCOUNT_NAME).get("meta/env") == b"env"


def test_sas_token_that_may_not_create_the_container(
        azurite: AzuriteServer, container_name: str, clean_env: pytest.MonkeyPatch) -> None:
    """A container-scoped SAS (in a connection string) works on an existing container;
    on a missing one, init's create_bucket says it may not create it. No token in messages."""
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas(
        ACCOUNT_NAME, container_name, account_key=ACCOUNT_KEY,
        permission=ContainerSasPermissions(read=True, add=True, create=True, write=True,
                                           delete=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1))
    storage = AzureStorage(bucket=container_name, connection_string=(
        f"BlobEndpoint={azurite.endpoint_url};SharedAccessSignature={sas}"))
    assert storage.credential_source == "config connection_string"
    with pytest.raises(ContainerNotFound):
        storage.check()
    with pytest.raises(StorageError, match="may not create it") as info:
        storage.create_bucket()
    assert "sig=" not in one_line(info.value) and sas not in str(info.value)
    azurite.create_container(container_name)
    assert storage.create_bucket() is False
    storage.put("meta/sas", b"with a SAS")
    assert storage.get("meta/sas") == b"with a SAS"
    assert "sig=" not in repr(storage) + storage.where


def test_config_errors(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="no credentials"):
        AzureStorage(bucket="enigma-test")
    with pytest.raises(ConfigError, match="container name"):
        AzureStorage(bucket="Bad_Name", access_key=ACCOUNT_NAME, secret_key=ACCOUNT_KEY)
    with pytest.raises(ConfigError, match="container name"):
        AzureStorage(bucket="ab", access_key=ACCOUNT_NAME, secret_key=ACCOUNT_KEY)
    with pytest.raises(ConfigError, match="both 'access_key'") as info:
        AzureStorage(bucket="enigma-test", secret_key=ACCOUNT_KEY)
    one_line(info.value)
    with pytest.raises(ConfigError, match="not an account key") as info:
        AzureStorage(bucket="enigma-test", access_key=ACCOUNT_NAME, secret_key="s3cr3t!")
    assert "s3cr3t" not in str(info.value)
    with pytest.raises(ConfigError, match="max_connections"):
        AzureStorage(bucket="enigma-test", access_key=ACCOUNT_NAME, secret_key=ACCOUNT_KEY,
                     max_connections=0)
    clean_env.setenv("AZURE_STORAGE_CONNECTION_STRING", "garbage-with-a-secret")
    with pytest.raises(ConfigError, match="not a valid storage connection string") as info:
        AzureStorage(bucket="enigma-test").check()
    assert "garbage" not in str(info.value)


def test_wrong_account_key_is_a_one_line_storage_error(
        azurite: AzuriteServer, container_name: str, clean_env: pytest.MonkeyPatch) -> None:
    azurite.create_container(container_name)
    storage = AzureStorage(**azurite.provider_options(container_name, secret_key=WRONG_KEY))
    for action in (storage.check, lambda: storage.put("meta/x", b"x"),
                   lambda: storage.get("meta/x"), storage.create_bucket):
        with pytest.raises(StorageError) as info:
            action()
        assert not isinstance(info.value, TransientStorageError | ObjectNotFound)
        assert "check the account name and key" in one_line(info.value)
        assert container_name in str(info.value)


def test_missing_container(azurite: AzuriteServer, container_name: str,
                           clean_env: pytest.MonkeyPatch) -> None:
    storage = AzureStorage(**azurite.provider_options(container_name))
    with pytest.raises(ContainerNotFound) as info:
        storage.check()
    assert "container does not exist" in one_line(info.value)
    assert "enigma init" in str(info.value)
    # Reads and deletes say "no container", never "no such object" (or a silent no-op).
    for action in (lambda: storage.get("meta/x"), lambda: storage.exists("meta/x"),
                   lambda: storage.delete("meta/x"), lambda: list(storage.list("chunks/")),
                   lambda: storage.put("meta/x", b"x")):
        with pytest.raises(ContainerNotFound):
            action()


def test_wrong_account_name_in_endpoint(azurite: AzuriteServer, container_name: str,
                                        clean_env: pytest.MonkeyPatch) -> None:
    storage = AzureStorage(bucket=container_name, access_key="nosuchaccount",
                           secret_key=ACCOUNT_KEY,
                           endpoint_url=azurite.endpoint_url.replace(ACCOUNT_NAME,
                                                                     "nosuchaccount"))
    with pytest.raises(StorageError) as info:
        storage.check()
    assert not isinstance(info.value, TransientStorageError)
    one_line(info.value)


def test_dead_endpoint_fails_fast_and_transiently(container_name: str,
                                                  clean_env: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}/{ACCOUNT_NAME}"
    storage = AzureStorage(bucket=container_name, endpoint_url=endpoint,
                           access_key=ACCOUNT_NAME, secret_key=ACCOUNT_KEY)
    started = time.monotonic()
    for action in (storage.check, lambda: storage.put("chunks/00/x", b"x"),
                   lambda: storage.get("chunks/00/x"), storage.create_bucket,
                   lambda: list(storage.list("chunks/"))):
        with pytest.raises(TransientStorageError) as info:
            action()
        assert "cannot connect" in one_line(info.value)
        assert "connection refused" in str(info.value)
    assert time.monotonic() - started < 10


def test_stream_overwritten_while_reading_fails_transiently(
        azurite: AzuriteServer, container_name: str, clean_env: pytest.MonkeyPatch) -> None:
    storage = AzureStorage(**azurite.provider_options(container_name))
    storage.create_bucket()
    storage.put("meta/big", os.urandom(9 * 1024 * 1024))
    stream = storage.get_stream("meta/big")
    assert len(stream.read(1024 * 1024)) == 1024 * 1024
    storage.put("meta/big", b"replaced")
    with pytest.raises(TransientStorageError, match="changed while it was being read"):
        stream.read()
    stream.close()


def test_put_stream_with_short_reads(azurite: AzuriteServer, container_name: str,
                                     clean_env: pytest.MonkeyPatch) -> None:
    """A pipe-like stream that returns a few bytes at a time still uploads whole."""

    class Trickle(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data, self.pos = data, 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
            n = min(len(buffer), 70_001, len(self.data) - self.pos)
            buffer[:n] = self.data[self.pos:self.pos + n]
            self.pos += n
            return n

    data = os.urandom(9 * 1024 * 1024 + 5)
    storage = AzureStorage(**azurite.provider_options(container_name))
    storage.create_bucket()
    storage.put_stream("meta/trickle", Trickle(data))  # type: ignore[arg-type]
    assert storage.get("meta/trickle") == data


def test_readme_documents_every_option() -> None:
    import inspect

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for name in inspect.signature(AzureStorage.__init__).parameters:
        if name != "self":
            assert f"`{name}`" in readme, name
