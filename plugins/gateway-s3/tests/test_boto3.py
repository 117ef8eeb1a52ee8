"""boto3 against a real ``enigma serve``: buckets, objects, ranges, listing, errors, dedup."""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from gateway_support import Gateway, error_of

# -- buckets ---------------------------------------------------------------------------


def test_bucket_lifecycle(s3: Any, new_bucket_name: Callable[[], str]) -> None:
    name = new_bucket_name()
    s3.create_bucket(Bucket=name)
    assert name in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert s3.head_bucket(Bucket=name)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert s3.get_bucket_location(Bucket=name)["LocationConstraint"] is None
    assert error_of(lambda: s3.create_bucket(Bucket=name))[:2] == ("BucketAlreadyOwnedByYou",
                                                                    409)
    s3.put_object(Bucket=name, Key="k", Body=b"x")
    assert error_of(lambda: s3.delete_bucket(Bucket=name))[:2] == ("BucketNotEmpty", 409)
    s3.delete_object(Bucket=name, Key="k")
    s3.delete_bucket(Bucket=name)
    assert name not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert error_of(lambda: s3.head_bucket(Bucket=name))[1] == 404
    assert error_of(lambda: s3.delete_bucket(Bucket=name))[:2] == ("NoSuchBucket", 404)
    code, status, response = error_of(lambda: s3.list_objects_v2(Bucket=name))
    assert (code, status) == ("NoSuchBucket", 404)
    assert response["ResponseMetadata"]["RequestId"]


def test_bucket_region_and_names(s3: Any, new_bucket_name: Callable[[], str]) -> None:
    name = new_bucket_name()
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    assert s3.get_bucket_location(Bucket=name)["LocationConstraint"] == "eu-west-1"
    for bad in ("ab", "UPPER-case", "a..b", "192.168.1.1", "-leading", "x" * 64):
        assert error_of(lambda b=bad: s3.create_bucket(Bucket=b))[0] == "InvalidBucketName", bad


# -- objects ---------------------------------------------------------------------------


def test_object_round_trip_with_metadata(s3: Any, bucket: str) -> None:
    body = b"hello enigma gateway\n" * 100
    put = s3.put_object(Bucket=bucket, Key="dir/a file+plus ünï.txt", Body=body,
                        ContentType="text/plain", Metadata={"owner": "alice", "n": "1"},
                        CacheControl="max-age=60", ContentDisposition="attachment")
    etag = f'"{hashlib.md5(body).hexdigest()}"'
    assert put["ETag"] == etag
    got = s3.get_object(Bucket=bucket, Key="dir/a file+plus ünï.txt")
    assert got["Body"].read() == body
    assert got["ETag"] == etag
    assert got["ContentType"] == "text/plain"
    assert got["ContentLength"] == len(body)
    assert got["Metadata"] == {"owner": "alice", "n": "1"}
    assert got["CacheControl"] == "max-age=60"
    assert got["ContentDisposition"] == "attachment"
    head = s3.head_object(Bucket=bucket, Key="dir/a file+plus ünï.txt")
    assert head["ContentLength"] == len(body) and head["ETag"] == etag
    assert head["Metadata"] == {"owner": "alice", "n": "1"}
    # Overwrite, then delete (twice: idempotent).
    s3.put_object(Bucket=bucket, Key="dir/a file+plus ünï.txt", Body=b"v2")
    assert s3.get_object(Bucket=bucket, Key="dir/a file+plus ünï.txt")["Body"].read() == b"v2"
    for _ in range(2):
        assert s3.delete_object(Bucket=bucket, Key="dir/a file+plus ünï.txt")[
            "ResponseMetadata"]["HTTPStatusCode"] == 204
    assert error_of(lambda: s3.get_object(Bucket=bucket, Key="dir/a file+plus ünï.txt"))[:2] \
        == ("NoSuchKey", 404)
    assert error_of(lambda: s3.head_object(Bucket=bucket, Key="nope"))[1] == 404
    assert error_of(lambda: s3.get_object(Bucket="no-such-bucket-here", Key="k"))[0] \
        == "NoSuchBucket"
    assert error_of(lambda: s3.put_object(Bucket="no-such-bucket-here", Key="k",
                                          Body=b"x"))[0] == "NoSuchBucket"


def test_empty_object_and_versionid_null(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    got = s3.get_object(Bucket=bucket, Key="empty", VersionId="null")
    assert got["Body"].read() == b"" and got["ETag"] == f'"{hashlib.md5(b"").hexdigest()}"'
    assert "VersionId" not in got
    assert error_of(lambda: s3.get_object(Bucket=bucket, Key="empty", Range="bytes=0-0"))[:2] \
        == ("InvalidRange", 416)


def test_ranges(s3: Any, bucket: str) -> None:
    body = bytes(range(256)) * 40  # 10,240 bytes
    s3.put_object(Bucket=bucket, Key="r", Body=body)

    def get(spec: str) -> dict:
        return s3.get_object(Bucket=bucket, Key="r", Range=spec)

    part = get("bytes=10-19")
    assert part["Body"].read() == body[10:20]
    assert part["ContentRange"] == f"bytes 10-19/{len(body)}"
    assert part["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert get("bytes=10000-")["Body"].read() == body[10000:]
    assert get("bytes=-100")["Body"].read() == body[-100:]
    assert get("bytes=-99999")["Body"].read() == body
    assert get("bytes=10000-99999")["Body"].read() == body[10000:]
    code, status, response = error_of(lambda: get("bytes=10240-"))
    assert (code, status) == ("InvalidRange", 416)
    assert response["ResponseMetadata"]["HTTPHeaders"]["content-range"] == "bytes */10240"
    assert head_range(s3, bucket) == "bytes 0-0/10240"


def head_range(s3: Any, bucket: str) -> str:
    return s3.head_object(Bucket=bucket, Key="r", Range="bytes=0-0")["ContentRange"]


def test_bad_content_md5_is_refused(s3: Any, bucket: str) -> None:
    wrong = "1B2M2Y8AsgTpgAmY7PhCfg=="  # MD5 of b""
    code, status, _ = error_of(lambda: s3.put_object(Bucket=bucket, Key="m", Body=b"data",
                                                     ContentMD5=wrong))
    assert (code, status) == ("BadDigest", 400)
    assert error_of(lambda: s3.head_object(Bucket=bucket, Key="m"))[1] == 404
    good = s3.put_object(Bucket=bucket, Key="m", Body=b"", ContentMD5=wrong)
    assert good["ETag"] == f'"{hashlib.md5(b"").hexdigest()}"'


def test_big_object_round_trip(gateway: Gateway, s3: Any, bucket: str) -> None:
    """20 MiB in one PutObject (boto3 would use multipart above 8 MiB): through the
    chunker (several CDC chunks), streamed both ways, bit-exact."""
    from boto3.s3.transfer import TransferConfig

    data = random.Random(7).randbytes(20 * 1024 * 1024)
    single = TransferConfig(multipart_threshold=1 << 30, multipart_chunksize=1 << 30)
    s3.upload_fileobj(io.BytesIO(data), bucket, "big.bin", Config=single)
    out = io.BytesIO()
    s3.download_fileobj(bucket, "big.bin", out, Config=single)
    assert hashlib.sha256(out.getvalue()).digest() == hashlib.sha256(data).digest()
    head = s3.head_object(Bucket=bucket, Key="big.bin")
    assert head["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    # Ranges across chunk boundaries (CDC chunks are 1-16 MiB) fetch only what they need.
    for first, last in ((0, 0), (1_000_000, 9_000_000), (4_194_000, 4_195_000),
                        (len(data) - 5, len(data) - 1)):
        got = s3.get_object(Bucket=bucket, Key="big.bin", Range=f"bytes={first}-{last}")
        assert got["Body"].read() == data[first:last + 1]


def test_dedup_across_keys_and_with_cli_backups(gateway: Gateway, s3: Any, bucket: str,
                                               tmp_path: Any) -> None:
    data = random.Random(11).randbytes(6 * 1024 * 1024)
    s3.put_object(Bucket=bucket, Key="one", Body=data)
    chunks = gateway.status()["chunks"]
    files = gateway.chunk_files()
    s3.put_object(Bucket=bucket, Key="two", Body=data)
    s3.put_object(Bucket=bucket, Key="one", Body=data)  # overwrite with the same bytes
    assert gateway.status()["chunks"] == chunks
    assert gateway.chunk_files() == files  # nothing sealed or written again
    assert s3.get_object(Bucket=bucket, Key="two")["Body"].read() == data
    # A CLI backup of the same bytes reuses the gateway's chunks...
    source = tmp_path / "src"
    source.mkdir()
    (source / "same.bin").write_bytes(data)
    gateway.runner.ok("backup", str(source))
    assert gateway.status()["chunks"] == chunks
    # ...and an object whose bytes a CLI backup stored first adds nothing either.
    other = random.Random(12).randbytes(3 * 1024 * 1024)
    (source / "other.bin").write_bytes(other)
    gateway.runner.ok("backup", str(source))
    after_backup = gateway.status()["chunks"]
    files = gateway.chunk_files()
    s3.put_object(Bucket=bucket, Key="from-backup", Body=other)
    assert gateway.status()["chunks"] == after_backup
    assert gateway.chunk_files() == files


def test_stored_chunks_are_sealed(gateway: Gateway, s3: Any, bucket: str) -> None:
    marker = b"ENIGMA-GATEWAY-PLAINTEXT-MARKER:"
    body = marker * 40_000  # ~1.3 MiB, compressible
    s3.put_object(Bucket=bucket, Key="secret.txt", Body=body)
    stored = list((gateway.config_dir / "storage").rglob("*"))
    assert any("chunks" in str(p) for p in stored)
    for path in stored:
        if path.is_file() and path.name != "manifest.db":
            assert marker not in path.read_bytes(), path
    assert s3.get_object(Bucket=bucket, Key="secret.txt")["Body"].read() == body


def test_concurrent_puts_of_the_same_content(gateway: Gateway, s3: Any, bucket: str) -> None:
    """Racing PUTs share in-flight chunks; every object ends up complete and readable."""
    data = random.Random(21).randbytes(3 * 1024 * 1024)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: s3.put_object(Bucket=bucket, Key=f"c{i}", Body=data),
                      range(8)))
    for i in range(8):
        assert s3.get_object(Bucket=bucket, Key=f"c{i}")["Body"].read() == data


# -- listing ---------------------------------------------------------------------------


def test_list_v2_pagination_over_1100_keys(s3: Any, bucket: str) -> None:
    keys = sorted(f"k/{i:05d}" for i in range(1100))
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=b"x"), keys))
    first = s3.list_objects_v2(Bucket=bucket)
    assert first["IsTruncated"] is True and first["KeyCount"] == 1000
    assert [o["Key"] for o in first["Contents"]] == keys[:1000]
    second = s3.list_objects_v2(Bucket=bucket,
                                ContinuationToken=first["NextContinuationToken"])
    assert second["IsTruncated"] is False and "NextContinuationToken" not in second
    assert [o["Key"] for o in second["Contents"]] == keys[1000:]
    pages = list(s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, PaginationConfig={"PageSize": 100}))
    assert len(pages) == 11
    assert [o["Key"] for p in pages for o in p["Contents"]] == keys
    after = s3.list_objects_v2(Bucket=bucket, StartAfter=keys[1094])
    assert [o["Key"] for o in after["Contents"]] == keys[1095:]
    assert s3.list_objects_v2(Bucket=bucket, MaxKeys=0)["KeyCount"] == 0
    # v1 with markers
    v1 = list(s3.get_paginator("list_objects").paginate(
        Bucket=bucket, PaginationConfig={"PageSize": 300}))
    assert [o["Key"] for p in v1 for o in p["Contents"]] == keys
    assert s3.list_objects(Bucket=bucket, Marker=keys[-2])["Contents"][0]["Key"] == keys[-1]


def test_delimiter_and_common_prefixes(s3: Any, bucket: str) -> None:
    keys = ["a/1", "a/2", "a/b/3", "b/x/1", "b/y", "c", "d/", "e+f/g h"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"1")
    top = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [o["Key"] for o in top["Contents"]] == ["c"]
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["a/", "b/", "d/", "e+f/"]
    assert top["KeyCount"] == 5
    under = s3.list_objects_v2(Bucket=bucket, Delimiter="/", Prefix="a/")
    assert [o["Key"] for o in under["Contents"]] == ["a/1", "a/2"]
    assert [p["Prefix"] for p in under["CommonPrefixes"]] == ["a/b/"]
    # One entry per page: every key or prefix exactly once, in order.
    seen = []
    for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Delimiter="/", PaginationConfig={"PageSize": 1}):
        seen += [o["Key"] for o in page.get("Contents", [])]
        seen += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    assert seen == ["a/", "b/", "c", "d/", "e+f/"]
    v1 = []
    for page in s3.get_paginator("list_objects").paginate(
            Bucket=bucket, Delimiter="/", PaginationConfig={"PageSize": 2}):
        v1 += [o["Key"] for o in page.get("Contents", [])]
        v1 += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    assert sorted(v1) == ["a/", "b/", "c", "d/", "e+f/"]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="e+f/")["Contents"]] \
        == ["e+f/g h"]


# -- authentication and unsupported operations ------------------------------------------


def test_auth_failures(gateway: Gateway, bucket: str) -> None:
    bad_secret = gateway.client(secret_key="wrong-secret")
    code, status, response = error_of(lambda: bad_secret.list_objects_v2(Bucket=bucket))
    assert (code, status) == ("SignatureDoesNotMatch", 403)
    assert response["ResponseMetadata"]["RequestId"]
    unknown = gateway.client(access_key="NOSUCHKEY")
    assert error_of(lambda: unknown.list_buckets())[:2] == ("InvalidAccessKeyId", 403)
    assert error_of(lambda: bad_secret.put_object(Bucket=bucket, Key="x", Body=b"1"))[0] \
        == "SignatureDoesNotMatch"


def test_anonymous_and_presigned_requests(gateway: Gateway, s3: Any, bucket: str) -> None:
    import urllib.error
    import urllib.request

    s3.put_object(Bucket=bucket, Key="p", Body=b"presigned body")
    s3 = gateway.client(signature_version="s3v4")  # boto3 presigns with SigV2 otherwise
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{gateway.url}/{bucket}/p")
    assert info.value.code == 403
    text = info.value.read().decode()
    assert "<Code>AccessDenied</Code>" in text and "<RequestId>" in text
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "p"},
                                    ExpiresIn=60)
    with urllib.request.urlopen(url) as response:
        assert response.read() == b"presigned body"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url.replace("X-Amz-Expires=60", "X-Amz-Expires=61"))
    assert info.value.code == 403 and "SignatureDoesNotMatch" in info.value.read().decode()
    import datetime

    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=2)
    # boto3[crt] (a test dependency) signs with awscrt's signer, which has its own clock.
    with mock.patch("botocore.auth.get_current_datetime", return_value=past.replace(
            tzinfo=None)), mock.patch("botocore.crt.auth.get_current_datetime",
                                      return_value=past):
        old = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "p"},
                                        ExpiresIn=60)
        code, status, response = error_of(lambda: s3.list_buckets())
    assert (code, status) == ("RequestTimeTooSkewed", 403)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(old)
    assert info.value.code == 403
    body = info.value.read().decode()
    assert "<Code>AccessDenied</Code>" in body and "expired" in body


def test_unsupported_operations_say_not_implemented(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="src", Body=b"1")
    for call in (lambda: s3.get_bucket_acl(Bucket=bucket),
                 lambda: s3.get_object_tagging(Bucket=bucket, Key="src")):
        assert error_of(call)[:2] == ("NotImplemented", 501)
    assert error_of(lambda: s3.get_object(Bucket=bucket, Key="src", VersionId="abc"))[0] \
        == "InvalidArgument"


def test_copy_object_shares_chunks(gateway: Gateway, s3: Any, bucket: str) -> None:
    data = random.Random(31).randbytes(2 * 1024 * 1024)
    s3.put_object(Bucket=bucket, Key="src", Body=data, ContentType="text/x-src",
                  Metadata={"a": "1"})
    chunks, files = gateway.status()["chunks"], gateway.chunk_files()
    copied = s3.copy_object(Bucket=bucket, Key="dst dir/copy",
                            CopySource={"Bucket": bucket, "Key": "src"})
    etag = f'"{hashlib.md5(data).hexdigest()}"'
    assert copied["CopyObjectResult"]["ETag"] == etag
    got = s3.get_object(Bucket=bucket, Key="dst dir/copy")
    assert got["Body"].read() == data
    assert got["Metadata"] == {"a": "1"} and got["ContentType"] == "text/x-src"
    assert gateway.status()["chunks"] == chunks and gateway.chunk_files() == files
    s3.copy_object(Bucket=bucket, Key="replaced", CopySource=f"{bucket}/src",
                   MetadataDirective="REPLACE", Metadata={"b": "2"}, ContentType="x/y")
    head = s3.head_object(Bucket=bucket, Key="replaced")
    assert head["Metadata"] == {"b": "2"} and head["ContentType"] == "x/y"
    s3.delete_object(Bucket=bucket, Key="src")  # the copies keep the chunks alive
    assert s3.get_object(Bucket=bucket, Key="replaced")["Body"].read() == data
    assert error_of(lambda: s3.copy_object(Bucket=bucket, Key="x", CopySource=f"{bucket}/src")
                    )[:2] == ("NoSuchKey", 404)
    assert error_of(lambda: s3.copy_object(Bucket=bucket, Key="replaced",
                                           CopySource=f"{bucket}/replaced"))[0] \
        == "InvalidRequest"
    assert error_of(lambda: s3.copy_object(
        Bucket=bucket, Key="y", CopySource=f"{bucket}/replaced",
        CopySourceIfMatch='"0123"'))[:2] == ("PreconditionFailed", 412)


def test_delete_objects(s3: Any, bucket: str) -> None:
    keys = [f"d/{i}" for i in range(5)]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"1")
    result = s3.delete_objects(Bucket=bucket, Delete={
        "Objects": [{"Key": k} for k in [*keys[:3], "missing"]]})
    assert sorted(d["Key"] for d in result["Deleted"]) == sorted([*keys[:3], "missing"])
    quiet = s3.delete_objects(Bucket=bucket, Delete={
        "Objects": [{"Key": k} for k in keys[3:]], "Quiet": True})
    assert "Deleted" not in quiet and "Errors" not in quiet
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_conditional_get(s3: Any, bucket: str) -> None:
    import datetime

    s3.put_object(Bucket=bucket, Key="c", Body=b"conditional")
    etag = s3.head_object(Bucket=bucket, Key="c")["ETag"]
    assert s3.get_object(Bucket=bucket, Key="c", IfMatch=etag)["Body"].read() == b"conditional"
    assert error_of(lambda: s3.get_object(Bucket=bucket, Key="c", IfMatch='"nope"'))[:2] \
        == ("PreconditionFailed", 412)
    assert error_of(lambda: s3.get_object(Bucket=bucket, Key="c", IfNoneMatch=etag))[1] == 304
    assert error_of(lambda: s3.head_object(Bucket=bucket, Key="c", IfNoneMatch="*"))[1] == 304
    future = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    assert error_of(lambda: s3.get_object(Bucket=bucket, Key="c", IfModifiedSince=future)
                    )[1] == 304
    assert s3.get_object(Bucket=bucket, Key="c", IfModifiedSince=past)["Body"].read()
    assert error_of(lambda: s3.get_object(Bucket=bucket, Key="c", IfUnmodifiedSince=past)
                    )[1] == 412


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_memory_stays_flat_for_a_large_object(gateway: Gateway, s3: Any, bucket: str,
                                              tmp_path: Path) -> None:
    """A 256 MiB object streams through: the server's peak RSS grows far less than that,
    both ways (a gateway buffering bodies would grow by the object's size)."""
    from boto3.s3.transfer import TransferConfig

    process = gateway.process.process
    assert process is not None
    source = tmp_path / "large.bin"
    with open(source, "wb") as out:
        for _ in range(16):
            out.write(os.urandom(16 * 1024 * 1024))
    before = peak_rss(process.pid)
    single = TransferConfig(multipart_threshold=1 << 40)
    s3.upload_file(str(source), bucket, "large", Config=single)
    back = tmp_path / "back.bin"
    s3.download_file(bucket, "large", str(back), Config=single)
    grown = peak_rss(process.pid) - before
    assert grown < 160 * 1024 * 1024, f"server peak RSS grew by {grown >> 20} MiB"
    assert file_sha256(back) == file_sha256(source)
    source.unlink()
    back.unlink()


def file_sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.digest()


def test_damaged_chunk_is_an_error_not_wrong_data(gateway: Gateway, s3: Any,
                                                  bucket: str) -> None:
    data = random.Random(41).randbytes(300_000)
    gateway.put_damaged(s3, bucket, "fragile", data)
    code, status, _ = error_of(lambda: s3.get_object(Bucket=bucket, Key="fragile"))
    assert (code, status) == ("InternalError", 500)
    assert s3.head_object(Bucket=bucket, Key="fragile")["ContentLength"] == len(data)


def test_client_gone_mid_upload_creates_nothing(gateway: Gateway, s3: Any,
                                                bucket: str) -> None:
    import socket

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from gateway_support import ACCESS_KEY, SECRET_KEY

    request = AWSRequest("PUT", f"{gateway.url}/{bucket}/partial", headers={
        "Host": f"127.0.0.1:{gateway.port}", "Content-Length": str(8 << 20),
        "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", "us-east-1").add_auth(request)
    head = f"PUT /{bucket}/partial HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in request.headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(head.encode() + os.urandom(3 << 20))
    s3.put_object(Bucket=bucket, Key="after", Body=b"still serving")
    assert error_of(lambda: s3.head_object(Bucket=bucket, Key="partial"))[1] == 404
    assert s3.get_object(Bucket=bucket, Key="after")["Body"].read() == b"still serving"


def test_list_buckets_pagination(s3: Any) -> None:
    tag = random.Random().randbytes(4).hex()
    names = sorted(f"pg-{tag}-{i}" for i in range(5))
    for name in names:
        s3.create_bucket(Bucket=name)
    pages = list(s3.get_paginator("list_buckets").paginate(
        Prefix=f"pg-{tag}-", PaginationConfig={"PageSize": 2}))
    assert len(pages) == 3
    assert [b["Name"] for p in pages for b in p["Buckets"]] == names
    for name in names:
        s3.delete_bucket(Bucket=name)


def test_each_key_pair_has_its_own_buckets(gateway: Gateway, s3: Any, bucket: str) -> None:
    from gateway_support import OTHER_ACCESS_KEY, OTHER_SECRET_KEY

    other = gateway.client(access_key=OTHER_ACCESS_KEY, secret_key=OTHER_SECRET_KEY)
    s3.put_object(Bucket=bucket, Key="mine", Body=b"1")
    assert bucket not in [b["Name"] for b in other.list_buckets()["Buckets"]]
    assert error_of(lambda: other.get_object(Bucket=bucket, Key="mine"))[:2] \
        == ("AccessDenied", 403)
    assert error_of(lambda: other.create_bucket(Bucket=bucket))[:2] == ("BucketAlreadyExists",
                                                                          409)
    name = f"other-{random.Random().randbytes(6).hex()}"
    other.create_bucket(Bucket=name)
    other.put_object(Bucket=name, Key="theirs", Body=b"2")
    assert other.get_object(Bucket=name, Key="theirs")["Body"].read() == b"2"
    assert name not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_multipart_upload_through_the_transfer_manager(s3: Any, bucket: str) -> None:
    from boto3.s3.transfer import TransferConfig

    mib = 1024 * 1024
    data = random.Random(51).randbytes(13 * mib + 12345)
    parts = TransferConfig(multipart_threshold=5 * mib, multipart_chunksize=5 * mib,
                           max_concurrency=4)
    s3.upload_fileobj(io.BytesIO(data), bucket, "multi", Config=parts)
    got = s3.get_object(Bucket=bucket, Key="multi")
    assert got["Body"].read() == data
    digests = b"".join(hashlib.md5(data[i:i + 5 * mib]).digest()
                       for i in range(0, len(data), 5 * mib))
    assert got["ETag"] == f'"{hashlib.md5(digests).hexdigest()}-3"'
    assert s3.get_object(Bucket=bucket, Key="multi", Range=f"bytes={5 * mib - 10}-"
                         f"{5 * mib + 9}")["Body"].read() == data[5 * mib - 10:5 * mib + 10]
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_multipart_operations_and_errors(s3: Any, bucket: str) -> None:
    mib = 1024 * 1024
    first, second = random.Random(61).randbytes(5 * mib), b"tail part"
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp", ContentType="x/mp",
                                        Metadata={"m": "1"})["UploadId"]
    listed = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in listed] == [("mp", upload)]
    # Out of order: part 2 first.
    etag2 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload, PartNumber=2,
                           Body=second)["ETag"]
    etag1 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload, PartNumber=1,
                           Body=first)["ETag"]
    parts = s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload)["Parts"]
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in parts] == [
        (1, etag1, len(first)), (2, etag2, len(second))]

    def complete(*pairs: tuple[int, str]) -> Any:
        return s3.complete_multipart_upload(
            Bucket=bucket, Key="mp", UploadId=upload,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in pairs]})

    assert error_of(lambda: complete((2, etag2), (1, etag1)))[0] == "InvalidPartOrder"
    assert error_of(lambda: complete((1, etag1), (2, '"00"')))[0] == "InvalidPart"
    assert error_of(lambda: complete((1, etag1), (3, etag2)))[0] == "InvalidPart"
    small = s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload, PartNumber=3,
                           Body=b"small")["ETag"]
    assert error_of(lambda: complete((2, etag2), (3, small)))[0] == "EntityTooSmall"
    done = complete((1, etag1), (2, etag2))  # part 3 is left out, and discarded
    got = s3.get_object(Bucket=bucket, Key="mp")
    assert got["Body"].read() == first + second
    assert got["ETag"] == done["ETag"] and done["ETag"].endswith('-2"')
    assert got["ContentType"] == "x/mp" and got["Metadata"] == {"m": "1"}
    assert error_of(lambda: s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload))[:2] \
        == ("NoSuchUpload", 404)
    # Abort
    other = s3.create_multipart_upload(Bucket=bucket, Key="ab")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="ab", UploadId=other, PartNumber=1, Body=b"x")
    s3.abort_multipart_upload(Bucket=bucket, Key="ab", UploadId=other)
    assert error_of(lambda: s3.upload_part(Bucket=bucket, Key="ab", UploadId=other,
                                           PartNumber=2, Body=b"y"))[0] == "NoSuchUpload"
    assert error_of(lambda: s3.abort_multipart_upload(Bucket=bucket, Key="ab",
                                                      UploadId=other))[0] == "NoSuchUpload"
    assert error_of(lambda: s3.head_object(Bucket=bucket, Key="ab"))[1] == 404
    assert error_of(lambda: s3.upload_part(Bucket=bucket, Key="mp", UploadId="nope",
                                           PartNumber=1, Body=b"y"))[0] == "NoSuchUpload"
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert ".multipart" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert error_of(lambda: s3.list_objects_v2(Bucket=".multipart"))[1] in (400, 403)


def test_refused_upload_does_not_poison_the_connection(s3: Any, bucket: str) -> None:
    """An upload refused before its body was read (boto3 waits on ``Expect: 100-continue``
    and never sends it) must not leave body bytes in front of the next request."""
    for _ in range(3):
        assert error_of(lambda: s3.put_object(Bucket="no-such-bucket-xyz", Key="k",
                                              Body=b"abc"))[0] == "NoSuchBucket"
        s3.put_object(Bucket=bucket, Key="ok", Body=b"fine")
        assert s3.get_object(Bucket=bucket, Key="ok")["Body"].read() == b"fine"


def test_writes_wait_for_gc(gateway: Gateway, s3: Any, bucket: str) -> None:
    """Writes share the repository lock with backups: while gc holds it exclusively a PUT
    is answered 503 SlowDown (SDKs retry it); a running gc cannot delete chunks a PUT has
    stored but not yet recorded."""
    from enigma.lock import repository_lock

    with repository_lock(gateway.config_dir, exclusive=True):
        code, status, _ = error_of(lambda: s3.put_object(Bucket=bucket, Key="k", Body=b"1"))
        assert (code, status) == ("SlowDown", 503)
        assert error_of(lambda: s3.get_object(Bucket=bucket, Key="k"))[0] == "NoSuchKey"
    s3.put_object(Bucket=bucket, Key="k", Body=b"1")
    # gc with the gateway idle keeps every object's chunks.
    data = random.Random(71).randbytes(2_000_000)
    s3.put_object(Bucket=bucket, Key="kept", Body=data)
    s3.put_object(Bucket=bucket, Key="dropped", Body=random.Random(72).randbytes(100_000))
    s3.delete_object(Bucket=bucket, Key="dropped")
    gateway.runner.ok("gc")
    assert s3.get_object(Bucket=bucket, Key="kept")["Body"].read() == data
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"1"


def test_virtual_host_style(gateway: Gateway, s3: Any, bucket: str) -> None:
    """With ``domain = "localhost"``, ``<bucket>.localhost`` addresses the bucket."""
    import socket

    real = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".localhost"):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    import boto3
    from botocore.config import Config
    from gateway_support import ACCESS_KEY, SECRET_KEY

    vhost = boto3.client("s3", endpoint_url=f"http://localhost:{gateway.port}",
                         aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                         region_name="us-east-1",
                         config=Config(s3={"addressing_style": "virtual"},
                                       retries={"max_attempts": 1}))
    with mock.patch("socket.getaddrinfo", resolve):
        vhost.put_object(Bucket=bucket, Key="v/h.txt", Body=b"virtual")
        assert vhost.get_object(Bucket=bucket, Key="v/h.txt")["Body"].read() == b"virtual"
        listed = vhost.list_objects_v2(Bucket=bucket, Prefix="v/")
        assert [o["Key"] for o in listed["Contents"]] == ["v/h.txt"]
    assert s3.get_object(Bucket=bucket, Key="v/h.txt")["Body"].read() == b"virtual"


def test_delete_objects_with_a_body_longer_than_one_read(s3: Any, bucket: str) -> None:
    """1,000 keys of 300 characters: ~350 KB of XML, which arrives in several pieces."""
    keys = [f"{i:04d}-" + "k" * 295 for i in range(1000)]
    for key in keys[:3]:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    result = s3.delete_objects(Bucket=bucket, Delete={
        "Objects": [{"Key": k} for k in keys]})
    assert len(result["Deleted"]) == 1000 and not result.get("Errors")
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
