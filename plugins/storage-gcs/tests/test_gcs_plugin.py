"""GCS-specific behaviour against a real fake-gcs-server: discovery, credentials, failures."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from enigma_storage_gcs.provider import BucketNotFound, GcsStorage, _UploadStream
from servers import free_port
from servers.gcs import GcsServer

from enigma.errors import ConfigError, ObjectNotFound, StorageError, TransientStorageError
from enigma.plugin_manager import PluginManager


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


def test_type_resolves_through_the_entry_point() -> None:
    manager = PluginManager()
    assert manager.get("storage", "Gcs") is GcsStorage
    assert manager.get("storage", "GCS") is GcsStorage
    info = {d.name: d for d in manager.describe()}["enigma-storage-gcs"]
    assert info.provides == {"storage": ["gcs"]} and not info.errors


def test_library_is_imported_lazily() -> None:
    """Loading every plugin (what `enigma plugins` does) must not import google-cloud-storage."""
    code = ("import sys; from enigma.plugin_manager import PluginManager; "
            "PluginManager().get('storage', 'Gcs'); "
            "print([m for m in sys.modules if m.startswith(('google.cloud', 'google.auth'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
    timing = subprocess.run([sys.executable, "-X", "importtime", "-c", code],
                            capture_output=True, text=True, check=True).stderr
    assert "google.cloud.storage" not in timing


def test_create_bucket_is_idempotent(gcs: GcsServer, bucket_name: str,
                                     clean_env: pytest.MonkeyPatch) -> None:
    storage = GcsStorage(**gcs.provider_options(bucket_name, region="us-east-1",
                                                path_style=True, access_key="ignored"))
    assert bucket_name not in gcs.bucket_names()
    assert storage.create_bucket() is True
    assert bucket_name in gcs.bucket_names()
    assert storage.create_bucket() is False
    storage.check()
    storage.put("meta/x", b"payload")
    storage.close()
    assert storage.get("meta/x") == b"payload"  # reopens after close
    storage.close()


def test_storage_emulator_host_from_environment(gcs: GcsServer, bucket_name: str,
                                                clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STORAGE_EMULATOR_HOST", f"{gcs.host}:{gcs.port}")  # no scheme, as
    storage = GcsStorage(bucket=bucket_name)  # gcloud's emulators print it
    assert storage.endpoint_url == gcs.endpoint_url
    assert storage.credential_source == "anonymous (emulator)"
    assert storage.create_bucket() is True
    storage.put("meta/env", b"via STORAGE_EMULATOR_HOST")
    assert GcsStorage(bucket=bucket_name).get("meta/env") == b"via STORAGE_EMULATOR_HOST"


def test_missing_bucket(gcs: GcsServer, bucket_name: str,
                        clean_env: pytest.MonkeyPatch) -> None:
    storage = GcsStorage(**gcs.provider_options(bucket_name))
    with pytest.raises(BucketNotFound) as info:
        storage.check()
    assert "bucket does not exist" in one_line(info.value)
    assert "enigma init" in str(info.value) and bucket_name in str(info.value)
    # Reads and deletes say "no bucket", never "no such object" (or a silent no-op).
    for action in (lambda: storage.get("meta/x"), lambda: storage.get_range("meta/x", 0, 5),
                   lambda: storage.exists("meta/x"), lambda: storage.delete("meta/x"),
                   lambda: list(storage.list("chunks/")), lambda: storage.put("meta/x", b"x")):
        with pytest.raises(BucketNotFound):
            action()


def test_dead_endpoint_fails_fast_and_transiently(bucket_name: str,
                                                  clean_env: pytest.MonkeyPatch) -> None:
    storage = GcsStorage(bucket=bucket_name, endpoint_url=f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    for action in (storage.check, lambda: storage.put("chunks/00/x", b"x"),
                   lambda: storage.get("chunks/00/x"), storage.create_bucket):
        with pytest.raises(TransientStorageError) as info:
            action()
        assert "cannot connect" in one_line(info.value)
        assert "connection refused" in str(info.value)
    assert time.monotonic() - started < 10


def test_application_default_credentials_problems_are_one_line(
        bucket_name: str, clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    storage = GcsStorage(bucket=bucket_name)
    assert storage.credential_source == "Application Default Credentials"
    with pytest.raises(StorageError) as info:
        storage.check()
    assert not isinstance(info.value, TransientStorageError)
    assert "GOOGLE_APPLICATION_CREDENTIALS" in one_line(info.value)
    with pytest.raises(ConfigError, match="credentials_file"):
        GcsStorage(bucket=bucket_name, credentials_file=str(tmp_path / "nope.json")).check()


def test_service_account_key_in_secret_key(gcs: GcsServer, bucket_name: str,
                                           clean_env: pytest.MonkeyPatch) -> None:
    """A service-account JSON key in secret_key is used (and its token endpoint is
    contacted); the key itself never appears in a message."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    key = {"type": "service_account", "project_id": "enigma-sa", "private_key_id": "k1",
           "private_key": pem, "client_email": "enigma@enigma-sa.iam.gserviceaccount.com",
           "client_id": "1", "token_uri": f"http://127.0.0.1:{free_port()}/token"}
    storage = GcsStorage(bucket=bucket_name, endpoint_url=gcs.endpoint_url,
                         secret_key=json.dumps(key))
    assert storage.credential_source == "config secret_key"
    with pytest.raises(TransientStorageError, match="token service") as info:
        storage.check()
    assert "PRIVATE KEY" not in one_line(info.value)
    assert storage.client.project == "enigma-sa"


def test_config_errors(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="bucket name"):
        GcsStorage(bucket="Bad Name")
    with pytest.raises(ConfigError, match="service-account JSON key") as info:
        GcsStorage(bucket="enigma-test", access_key="GOOG1E...", secret_key="hmac-s3cr3t")
    assert "s3cr3t" not in str(info.value)
    with pytest.raises(ConfigError, match="endpoint_url"):
        GcsStorage(bucket="enigma-test", endpoint_url="127.0.0.1:4443")
    with pytest.raises(ConfigError, match="max_connections"):
        GcsStorage(bucket="enigma-test", max_connections=-1)


def test_stream_overwritten_while_reading_fails_transiently(
        gcs: GcsServer, bucket_name: str, clean_env: pytest.MonkeyPatch) -> None:
    storage = GcsStorage(**gcs.provider_options(bucket_name))
    storage.create_bucket()
    storage.put("meta/big", os.urandom(9 * 1024 * 1024))
    stream = storage.get_stream("meta/big")
    assert len(stream.read(1024 * 1024)) == 1024 * 1024
    storage.put("meta/big", b"replaced")
    with pytest.raises(TransientStorageError, match="changed while it was being read"):
        stream.read()
    stream.close()


class Trickle(io.RawIOBase):
    """A pipe-like stream: a few bytes per read."""

    def __init__(self, data: bytes, step: int = 70_001) -> None:
        self.data, self.pos, self.step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        n = min(len(buffer), self.step, len(self.data) - self.pos)
        buffer[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


def test_put_stream_with_short_reads(gcs: GcsServer, bucket_name: str,
                                     clean_env: pytest.MonkeyPatch) -> None:
    """Short reads must not end a resumable upload early (it takes a short chunk as the
    last one); sizes on and off the 8 MiB chunk boundary."""
    storage = GcsStorage(**gcs.provider_options(bucket_name))
    storage.create_bucket()
    for size in (0, 5, 8 * 1024 * 1024, 9 * 1024 * 1024 + 5):
        data = os.urandom(size)
        storage.put_stream(f"meta/trickle-{size}", Trickle(data))  # type: ignore[arg-type]
        assert storage.get(f"meta/trickle-{size}") == data


def test_upload_stream_rewinds_into_the_last_block() -> None:
    """What a resumable upload does after a failed chunk: seek back and read it again."""
    source = _UploadStream(Trickle(bytes(range(256)) * 40, step=3))  # type: ignore[arg-type]
    first = source.read(1000)
    second = source.read(1000)
    assert source.tell() == 2000
    source.seek(1500)
    again = source.read(1000)
    assert again == second[500:] + (bytes(range(256)) * 40)[2000:2500]
    assert source.tell() == 2500
    with pytest.raises(io.UnsupportedOperation):
        source.seek(0)
    assert first == (bytes(range(256)) * 40)[:1000]
    assert source.read() == (bytes(range(256)) * 40)[2500:]


def test_object_not_found_is_not_a_bucket_problem(gcs: GcsServer, bucket_name: str,
                                                  clean_env: pytest.MonkeyPatch) -> None:
    storage = GcsStorage(**gcs.provider_options(bucket_name))
    storage.create_bucket()
    with pytest.raises(ObjectNotFound) as info:
        storage.get("chunks/00/missing")
    assert "no such object chunks/00/missing" in one_line(info.value)


def test_readme_documents_every_option() -> None:
    import inspect

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for name in inspect.signature(GcsStorage.__init__).parameters:
        if name != "self":
            assert f"`{name}`" in readme, name
