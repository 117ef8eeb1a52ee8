"""What the S3 provider adds to the contract: type names, lazy imports, error mapping,
bucket creation, key prefixes, multipart streams. Against real moto and SeaweedFS servers."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable

import pytest
from enigma_storage_s3.storage import MIN_PART_SIZE, BucketNotFound, S3Storage, translate_error
from servers import free_port
from servers.s3 import S3Server

from enigma.errors import ConfigError, ObjectNotFound, StorageError, TransientStorageError
from enigma.plugin_manager import PluginManager
from enigma.testing import random_bytes

MakeStorage = Callable[..., S3Storage]


def assert_one_line(exc: BaseException, *fragments: str, secrets: tuple[str, ...] = ()) -> None:
    message = str(exc)
    assert "\n" not in message and message.strip() == message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    for secret in secrets:
        assert secret not in message, f"a secret leaked into {message!r}"


# -- registration -----------------------------------------------------------------------


@pytest.mark.parametrize("type_name", ["S3", "s3", "S3Compatible", "s3-compatible", "minio",
                                       "MinIO", "rustfs", "RustFS", "garage", "Garage"])
def test_type_names_resolve_through_the_plugin_manager(type_name: str) -> None:
    assert PluginManager().get("storage", type_name) is S3Storage


def test_plugin_is_listed_with_its_distribution() -> None:
    rows = {row.name: row for row in PluginManager().describe()}
    assert rows["enigma-storage-s3"].provides["storage"] == ["s3"]
    assert not rows["enigma-storage-s3"].errors


def test_boto3_is_imported_only_when_a_provider_talks() -> None:
    """``enigma --help`` must not pay for boto3: registering and building stay import-free."""
    code = (  # this plugin alone: other installed plugins may import what they like
        "import sys\n"
        "from enigma_storage_s3.plugin import register_storage_providers\n"
        "(cls,) = register_storage_providers()\n"
        "cls(bucket='b', endpoint_url='http://127.0.0.1:1', access_key='a', secret_key='s')\n"
        "loaded = [m for m in ('boto3', 'botocore', 'urllib3') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize("options, fragment", [
    ({"bucket": ""}, "bucket"),
    ({"bucket": "b", "access_key": "a"}, "secret_key"),
    ({"bucket": "b", "secret_key": "s"}, "access_key"),
    ({"bucket": "b", "endpoint_url": "minio:9000"}, "endpoint_url"),
    ({"bucket": "b", "path_style": "yes"}, "path_style"),
    ({"bucket": "b", "max_pool_connections": 0}, "max_pool_connections"),
    ({"bucket": "b", "part_size": 1024}, "part_size"),
    ({"bucket": "b", "read_timeout": "slow"}, "read_timeout"),
    ({"bucket": "b", "checksums": "always"}, "checksums"),
])
def test_bad_options_are_config_errors(options: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        S3Storage(**options)


def test_secrets_never_in_repr_or_messages() -> None:
    storage = S3Storage(bucket="b", endpoint_url="http://user:pw-in-url@127.0.0.1:1",
                        access_key="AKIDSECRET", secret_key="very-secret", path_style=True)
    assert "very-secret" not in repr(storage) and "pw-in-url" not in repr(storage)
    with pytest.raises(TransientStorageError) as caught:
        storage.check()
    assert_one_line(caught.value, "cannot connect", secrets=("very-secret", "pw-in-url"))
    storage.close()


# -- error mapping ----------------------------------------------------------------------


def client_error(code: str, status: int, operation: str = "PutObject") -> Exception:
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": f"{code} message"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


@pytest.mark.parametrize("code, status", [
    ("InternalError", 500), ("ServiceUnavailable", 503), ("SlowDown", 503), ("503", 503),
    ("Throttling", 400), ("RequestTimeout", 400), ("TooManyRequests", 429),
    ("OperationAborted", 409), ("BadGateway", 502),
])
def test_server_trouble_is_transient(code: str, status: int) -> None:
    error = translate_error(client_error(code, status), "s3 bucket 'b'", "https://x")
    assert isinstance(error, TransientStorageError)
    assert_one_line(error, "s3 bucket 'b'")


@pytest.mark.parametrize("code, status, fragment", [
    ("AccessDenied", 403, "access denied"),
    ("InvalidAccessKeyId", 403, "check access_key"),
    ("SignatureDoesNotMatch", 403, "check secret_key"),
    ("NoSuchBucket", 404, "bucket does not exist"),
    ("InvalidBucketName", 400, "invalid bucket name"),
    ("PermanentRedirect", 301, "another region"),
    ("EntityTooLarge", 400, "EntityTooLarge"),
])
def test_client_errors_are_permanent(code: str, status: int, fragment: str) -> None:
    error = translate_error(client_error(code, status), "s3 bucket 'b'", "https://x", key="k")
    assert type(error) in (StorageError, BucketNotFound), error
    assert_one_line(error, fragment)


def test_missing_object_is_object_not_found() -> None:
    error = translate_error(client_error("NoSuchKey", 404, "GetObject"), "s3", "x", key="k")
    assert isinstance(error, ObjectNotFound)


def test_network_errors_are_transient() -> None:
    from botocore.exceptions import (
        ConnectionClosedError,
        EndpointConnectionError,
        ReadTimeoutError,
        ResponseStreamingError,
    )
    from urllib3.exceptions import ProtocolError

    refused = ConnectionRefusedError(111, "Connection refused")
    for exc in (EndpointConnectionError(endpoint_url="http://h:1", error=refused),
                ConnectionClosedError(endpoint_url="http://h:1"),
                ReadTimeoutError(endpoint_url="http://h:1"),
                ResponseStreamingError(error=ProtocolError("reset")),
                ProtocolError("Connection broken"), ConnectionResetError(104, "reset")):
        error = translate_error(exc, "s3 bucket 'b'", "http://h:1")
        assert isinstance(error, TransientStorageError), exc
        assert_one_line(error)
    assert "connection refused" in str(translate_error(
        EndpointConnectionError(endpoint_url="http://h:1", error=refused), "s3", "http://h:1"))


# -- against real servers ---------------------------------------------------------------


def test_bad_credentials_are_permanent_one_line_errors(seaweed: S3Server,
                                                       fresh_bucket: Callable[..., str],
                                                       make_storage: MakeStorage) -> None:
    bucket = fresh_bucket(seaweed, "creds")
    make_storage(**seaweed.provider_options(bucket)).put("meta/x", b"x")
    wrong_secret = make_storage(**seaweed.provider_options(bucket, secret_key="not-the-secret"))
    unknown_key = make_storage(**seaweed.provider_options(bucket, access_key="nobody"))
    for storage, hint in ((wrong_secret, "secret_key"), (unknown_key, "access_key")):
        for action in (storage.check, lambda s=storage: s.put("meta/y", b"y"),
                       lambda s=storage: s.get("meta/x"), lambda s=storage: s.exists("meta/x"),
                       lambda s=storage: list(s.list("meta/")), storage.create_bucket):
            with pytest.raises(StorageError) as caught:
                action()
            assert not isinstance(caught.value, TransientStorageError | ObjectNotFound)
            assert_one_line(caught.value, f"s3 bucket '{bucket}'", hint,
                            secrets=("not-the-secret", seaweed.secret_key))


def test_missing_bucket(seaweed: S3Server, moto: S3Server, make_storage: MakeStorage) -> None:
    for server in (seaweed, moto):
        storage = make_storage(**server.provider_options("enigma-no-such-bucket"))
        with pytest.raises(BucketNotFound) as caught:
            storage.check()
        assert not isinstance(caught.value, TransientStorageError)
        assert_one_line(caught.value, "'enigma-no-such-bucket'", "does not exist")
    # SeaweedFS creates buckets on upload for admins; moto refuses like AWS does
    with pytest.raises(BucketNotFound):
        make_storage(**moto.provider_options("enigma-no-such-bucket")).put("meta/x", b"x")
    with pytest.raises(BucketNotFound):
        list(make_storage(**moto.provider_options("enigma-no-such-bucket")).list())


def test_server_down_is_transient(make_storage: MakeStorage) -> None:
    port = free_port()  # nothing listens there
    storage = make_storage(bucket="enigma-down", endpoint_url=f"http://127.0.0.1:{port}",
                           path_style=True, access_key="a", secret_key="s", connect_timeout=2)
    for action in (storage.check, lambda: storage.put("meta/x", b"x"),
                   lambda: storage.get("meta/x"), lambda: storage.exists("meta/x"),
                   lambda: list(storage.list()), lambda: storage.get_range("meta/x", 0, 5),
                   lambda: storage.put_stream("meta/x", io.BytesIO(b"x")), storage.create_bucket):
        with pytest.raises(TransientStorageError) as caught:
            action()
        assert_one_line(caught.value, f"http://127.0.0.1:{port}", "cannot connect",
                        "connection refused")


def test_create_bucket_creates_once(seaweed: S3Server, moto: S3Server, make_storage: MakeStorage,
                                    bucket_name: Callable[[str], str]) -> None:
    for server in (seaweed, moto):
        storage = make_storage(**server.provider_options(bucket_name("create")))
        with pytest.raises(BucketNotFound):
            storage.check()
        assert storage.create_bucket() is True
        storage.check()
        assert storage.create_bucket() is False
        storage.put("meta/x", b"x")
        assert storage.create_bucket() is False
        assert storage.get("meta/x") == b"x"


def test_create_bucket_outside_us_east_1_sets_the_location(
        moto: S3Server, make_storage: MakeStorage, bucket_name: Callable[[str], str]) -> None:
    """moto, like AWS, refuses a CreateBucket without LocationConstraint outside us-east-1."""
    bucket = bucket_name("eu")
    storage = make_storage(**moto.provider_options(bucket, region="eu-west-1"))
    assert storage.create_bucket() is True
    assert storage.create_bucket() is False
    location = moto.client().get_bucket_location(Bucket=bucket)["LocationConstraint"]
    assert location == "eu-west-1"


def test_read_only_credentials(seaweed: S3Server, fresh_bucket: Callable[..., str],
                               make_storage: MakeStorage,
                               bucket_name: Callable[[str], str]) -> None:
    bucket = fresh_bucket(seaweed, "ro")
    make_storage(**seaweed.provider_options(bucket)).put("meta/x", b"x")
    creds = {"access_key": seaweed.readonly_key, "secret_key": seaweed.readonly_secret}
    reader = make_storage(**seaweed.provider_options(bucket, **creds))
    reader.check()
    assert reader.get("meta/x") == b"x" and reader.exists("meta/x")
    assert reader.create_bucket() is False
    with pytest.raises(StorageError) as caught:
        reader.put("meta/y", b"y")
    assert not isinstance(caught.value, TransientStorageError)
    assert_one_line(caught.value, "access denied", "meta/y")
    # a missing bucket these credentials may not create: say what is missing
    newcomer = make_storage(**seaweed.provider_options(bucket_name("ro"), **creds))
    with pytest.raises(StorageError) as caught:
        newcomer.create_bucket()
    assert_one_line(caught.value, "does not exist", "may not create", "s3:CreateBucket")


def test_prefixes_share_a_bucket(seaweed: S3Server, fresh_bucket: Callable[..., str],
                                 make_storage: MakeStorage) -> None:
    bucket = fresh_bucket(seaweed, "prefix")
    one = make_storage(**seaweed.provider_options(bucket, prefix="one"))
    two = make_storage(**seaweed.provider_options(bucket, prefix="two/"))
    one.put("meta/config", b"1")
    two.put("meta/config", b"2")
    assert (one.get("meta/config"), two.get("meta/config")) == (b"1", b"2")
    assert list(one.list()) == ["meta/config"]
    keys = {o["Key"] for o in seaweed.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {"one/meta/config", "two/meta/config"}
    one.delete("meta/config")
    assert two.exists("meta/config") and not one.exists("meta/config")


@pytest.mark.parametrize("size", [0, MIN_PART_SIZE - 1, MIN_PART_SIZE, 3 * MIN_PART_SIZE + 7])
def test_put_stream_sizes_around_parts(moto: S3Server, fresh_bucket: Callable[..., str],
                                       make_storage: MakeStorage, size: int) -> None:
    """Single PUT below one part; multipart from one full part on; short reads are fine."""
    storage = make_storage(**moto.provider_options(fresh_bucket(moto, "parts"),
                                                   part_size=MIN_PART_SIZE))
    data = random_bytes(size, seed=size)

    class Trickle(io.RawIOBase):
        """Returns at most 1 MiB + 3 bytes per read, like a pipe."""

        def __init__(self) -> None:
            self.pos = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
            n = min(len(buffer), len(data) - self.pos, (1 << 20) + 3)
            buffer[:n] = data[self.pos : self.pos + n]
            self.pos += n
            return n

    storage.put_stream("meta/stream", Trickle())  # type: ignore[arg-type]
    assert storage.get("meta/stream") == data
    with storage.get_stream("meta/stream") as stream:
        assert stream.read() == data
    head = moto.client().head_object(Bucket=storage.bucket, Key="meta/stream")
    multipart = "-" in head["ETag"]
    assert multipart == (size >= MIN_PART_SIZE)


def test_failed_multipart_upload_is_aborted(moto: S3Server, fresh_bucket: Callable[..., str],
                                            make_storage: MakeStorage) -> None:
    bucket = fresh_bucket(moto, "abort")
    storage = make_storage(**moto.provider_options(bucket, part_size=MIN_PART_SIZE))

    class Breaks(io.RawIOBase):
        def __init__(self) -> None:
            self.left = 2 * MIN_PART_SIZE

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
            if self.left <= 0:
                raise OSError(5, "Input/output error")
            n = min(len(buffer), self.left)
            buffer[:n] = b"\0" * n
            self.left -= n
            return n

    with pytest.raises(OSError):
        storage.put_stream("meta/broken", Breaks())  # type: ignore[arg-type]
    assert not storage.exists("meta/broken")
    assert not moto.client().list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_pool_is_sized_for_the_core_concurrency(make_storage: MakeStorage) -> None:
    storage = make_storage(bucket="b", endpoint_url="http://127.0.0.1:1", path_style=True,
                           access_key="a", secret_key="s")
    assert storage.max_pool_connections >= 32
    assert storage.client.meta.config.max_pool_connections == storage.max_pool_connections
    assert storage.client.meta.config.s3["addressing_style"] == "path"
    sized = make_storage(bucket="b", max_pool_connections=5, region="eu-west-1")
    assert sized.client.meta.config.max_pool_connections == 5
    assert sized.client.meta.config.s3["addressing_style"] == "auto"


def test_checksums_default_per_endpoint(make_storage: MakeStorage) -> None:
    """AWS gets botocore's CRC32 checksums; custom endpoints only where S3 requires them."""
    aws = make_storage(bucket="b", region="eu-west-1")
    custom = make_storage(bucket="b", endpoint_url="http://127.0.0.1:1")
    assert aws.client.meta.config.request_checksum_calculation == "when_supported"
    assert custom.client.meta.config.request_checksum_calculation == "when_required"


def test_get_stream_resumes_a_broken_transfer(moto: S3Server, fresh_bucket: Callable[..., str],
                                              make_storage: MakeStorage) -> None:
    """A connection lost mid-body: the reader continues with a ranged GET from its offset."""
    storage = make_storage(**moto.provider_options(fresh_bucket(moto, "resume")))
    data = random_bytes(3 << 20, seed=11)
    storage.put("meta/big", data)
    with storage.get_stream("meta/big") as stream:
        head = stream.read(1 << 20)
        stream.raw._body._raw_stream.close()  # type: ignore[attr-defined]  # drop the socket
        rest = stream.read()
        assert stream.raw._resumes == 1  # type: ignore[attr-defined]
    assert head + rest == data
