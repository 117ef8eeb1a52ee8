"""Multipart beyond the basics, with boto3 against a real ``enigma serve``: UploadPartCopy
(whole and ranged, conditionals, errors, what it stores), GET/HEAD ``partNumber``,
ListMultipartUploads and ListParts paging; and upload expiry over a real manifest."""

from __future__ import annotations

import concurrent.futures
import datetime
import hashlib
import random
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from enigma_gateway_s3.multipart import UPLOADS, expire_uploads, iter_uploads, new_upload_id
from gateway_support import OTHER_ACCESS_KEY, OTHER_SECRET_KEY, Gateway, error_of

from enigma.manifest import BucketRecord, ChunkRef, Manifest, ObjectRecord

MIB = 1024 * 1024


def quoted_md5(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


def multipart_etag(parts: list[bytes]) -> str:
    digests = b"".join(hashlib.md5(part).digest() for part in parts)
    return f'"{hashlib.md5(digests).hexdigest()}-{len(parts)}"'


def chunk_refs(gateway: Gateway, bucket: str, key: str) -> list[ChunkRef]:
    """An object's chunk list, read from the gateway's manifest."""
    with Manifest(gateway.config_dir / "manifest.db") as manifest:
        record = manifest.get_object(bucket, key)
    assert record is not None
    return record.chunks


def upload_parts(s3: Any, bucket: str, key: str, parts: list[bytes], **create: Any) -> str:
    """A completed multipart object made of ``parts``; returns its ETag."""
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key, **create)["UploadId"]
    etags = [s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=n,
                            Body=part)["ETag"] for n, part in enumerate(parts, 1)]
    return s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={
            "Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]})["ETag"]


# -- UploadPartCopy ----------------------------------------------------------------------


def test_part_copies_and_uploads_make_one_object(gateway: Gateway, s3: Any,
                                                 bucket: str) -> None:
    rng = random.Random(71)
    source = rng.randbytes(24 * MIB + 4321)  # several chunks of the default CDC (avg 4 MiB)
    s3.put_object(Bucket=bucket, Key="src", Body=source)
    upload = s3.create_multipart_upload(Bucket=bucket, Key="dst",
                                        ContentType="x/dst")["UploadId"]

    def copy(number: int, **extra: Any) -> dict:
        return s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=upload,
                                   PartNumber=number, CopySource={"Bucket": bucket,
                                                                  "Key": "src"},
                                   **extra)["CopyPartResult"]

    files = gateway.chunk_files()
    whole = copy(1)
    assert gateway.chunk_files() == files  # the source's chunks, nothing stored again
    assert abs(whole["LastModified"].timestamp() - time.time()) < 300
    uploaded = rng.randbytes(5 * MIB + 11)
    uploaded_etag = s3.upload_part(Bucket=bucket, Key="dst", UploadId=upload, PartNumber=2,
                                   Body=uploaded)["ETag"]
    first, last = 1_000_003, 17_000_000  # inside the first chunk (min 1 MiB) .. mid-chunk
    files = gateway.chunk_files()
    ranged = copy(3, CopySourceRange=f"bytes={first}-{last}")
    assert 1 <= len(set(gateway.chunk_files()) - set(files)) <= 2  # just the edges
    tail = copy(4, CopySourceRange="bytes=100-199")  # both edges in one chunk

    parts = [source, uploaded, source[first:last + 1], source[100:200]]
    etags = [whole["ETag"], uploaded_etag, ranged["ETag"], tail["ETag"]]
    assert etags == [quoted_md5(part) for part in parts]
    listed = s3.list_parts(Bucket=bucket, Key="dst", UploadId=upload)["Parts"]
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in listed] == [
        (n, etag, len(part)) for n, (etag, part) in enumerate(zip(etags, parts, strict=True), 1)]
    done = s3.complete_multipart_upload(
        Bucket=bucket, Key="dst", UploadId=upload, MultipartUpload={
            "Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]})
    assert done["ETag"] == multipart_etag(parts)
    got = s3.get_object(Bucket=bucket, Key="dst")
    assert got["Body"].read() == b"".join(parts)
    assert got["ETag"] == done["ETag"] and got["ContentType"] == "x/dst"

    # Part 1 is the source's chunk list; part 3 holds the source's chunks inside the range.
    src, dst = chunk_refs(gateway, bucket, "src"), chunk_refs(gateway, bucket, "dst")
    assert [(r.chunk_id, r.offset, r.length) for r in dst[:len(src)]] == [
        (r.chunk_id, r.offset, r.length) for r in src]
    inner = [r for r in src if first <= r.offset and r.offset + r.length <= last + 1]
    assert inner, "the range should cover whole chunks"
    base = len(source) + len(uploaded)
    dst_set = {(bytes(r.chunk_id), r.offset, r.length) for r in dst}
    for ref in inner:
        assert (bytes(ref.chunk_id), base + ref.offset - first, ref.length) in dst_set


def test_whole_copy_of_a_single_put_object_reads_no_byte(gateway: Gateway, s3: Any,
                                                         bucket: str) -> None:
    """Its ETag is the MD5 already, so the source's (damaged) chunk is never opened; a
    ranged copy must read it and fails."""
    data = random.Random(73).randbytes(300_000)
    gateway.put_damaged(s3, bucket, "fragile", data)
    upload = s3.create_multipart_upload(Bucket=bucket, Key="dst")["UploadId"]

    def copy(number: int, **extra: Any) -> dict:
        return s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=upload,
                                   PartNumber=number, CopySource=f"{bucket}/fragile", **extra)

    assert copy(1)["CopyPartResult"]["ETag"] == quoted_md5(data)
    assert error_of(lambda: copy(2, CopySourceRange="bytes=0-99"))[:2] == ("InternalError",
                                                                          500)
    s3.abort_multipart_upload(Bucket=bucket, Key="dst", UploadId=upload)


def test_part_copy_conditions_and_errors(gateway: Gateway, s3: Any, bucket: str,
                                         new_bucket_name: Callable[[], str]) -> None:
    s3.put_object(Bucket=bucket, Key="src", Body=b"0123456789")
    head = s3.head_object(Bucket=bucket, Key="src")
    etag, modified = head["ETag"], head["LastModified"]
    past, future = modified - datetime.timedelta(days=1), modified + datetime.timedelta(days=1)
    upload = s3.create_multipart_upload(Bucket=bucket, Key="dst")["UploadId"]

    def copy(number: int, source: Any = f"{bucket}/src", **extra: Any) -> dict:
        return s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=upload,
                                   PartNumber=number, CopySource=source, **extra)

    done = copy(1, CopySourceIfMatch=etag, CopySourceRange="bytes=2-5")
    assert done["CopyPartResult"]["ETag"] == quoted_md5(b"2345")
    for failing in ({"CopySourceIfMatch": '"0123"'}, {"CopySourceIfNoneMatch": etag},
                    {"CopySourceIfUnmodifiedSince": past},
                    {"CopySourceIfModifiedSince": future}):
        assert error_of(partial(copy, 2, **failing))[:2] == ("PreconditionFailed", 412), \
            failing
    copy(3, CopySourceIfNoneMatch='"other"', CopySourceIfModifiedSince=past,
         CopySourceIfUnmodifiedSince=future)
    for bad in ("bytes=0-10", "bytes=10-10", "bytes=5-2", "bytes=3-", "bytes=-3", "items=0-1"):
        assert error_of(partial(copy, 4, CopySourceRange=bad))[:2] == ("InvalidArgument",
                                                                       400), bad
    assert error_of(lambda: copy(4, CopySourceRange="bytes=0-10"))[2]["Error"]["Message"] \
        == "Range specified is not valid for source object of size: 10"
    assert error_of(lambda: copy(4, f"{bucket}/missing"))[:2] == ("NoSuchKey", 404)
    assert error_of(lambda: copy(4, {"Bucket": bucket, "Key": "src", "VersionId": "v1"})
                    )[:2] == ("InvalidArgument", 400)
    copy(5, {"Bucket": bucket, "Key": "src", "VersionId": "null"})
    assert error_of(lambda: copy(0))[:2] == ("InvalidArgument", 400)
    assert error_of(lambda: copy(10_001))[:2] == ("InvalidArgument", 400)
    assert error_of(lambda: s3.upload_part_copy(
        Bucket=bucket, Key="dst", UploadId="nope", PartNumber=1,
        CopySource=f"{bucket}/src"))[:2] == ("NoSuchUpload", 404)
    other = gateway.client(access_key=OTHER_ACCESS_KEY, secret_key=OTHER_SECRET_KEY)
    foreign = new_bucket_name()
    other.create_bucket(Bucket=foreign)
    other.put_object(Bucket=foreign, Key="theirs", Body=b"not yours")
    assert error_of(lambda: copy(6, f"{foreign}/theirs"))[:2] == ("AccessDenied", 403)

    listed = s3.list_parts(Bucket=bucket, Key="dst", UploadId=upload)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in listed] == [(1, 4), (3, 10), (5, 10)]
    s3.abort_multipart_upload(Bucket=bucket, Key="dst", UploadId=upload)


# -- GET/HEAD ?partNumber ----------------------------------------------------------------


def test_get_and_head_one_part(gateway: Gateway, s3: Any, bucket: str) -> None:
    rng = random.Random(81)
    parts = [rng.randbytes(5 * MIB), rng.randbytes(5 * MIB), rng.randbytes(777)]
    size = sum(len(part) for part in parts)
    etag = upload_parts(s3, bucket, "three", parts, ContentType="x/three",
                        Metadata={"m": "1"})
    offset = 0
    for number, part in enumerate(parts, 1):
        span = f"bytes {offset}-{offset + len(part) - 1}/{size}"
        got = s3.get_object(Bucket=bucket, Key="three", PartNumber=number)
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert got["Body"].read() == part
        assert (got["ContentLength"], got["ContentRange"], got["PartsCount"], got["ETag"]) \
            == (len(part), span, 3, etag)
        assert got["Metadata"] == {"m": "1"} and got["ContentType"] == "x/three"
        head = s3.head_object(Bucket=bucket, Key="three", PartNumber=number)
        assert head["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert (head["ContentLength"], head["ContentRange"], head["PartsCount"]) \
            == (len(part), span, 3)
        offset += len(part)
    plain = s3.get_object(Bucket=bucket, Key="three")
    assert "PartsCount" not in plain and plain["Metadata"] == {"m": "1"}
    headers = plain["ResponseMetadata"]["HTTPHeaders"]
    assert not any("enigma" in name or str(5 * MIB) in value  # the layout stays inside
                   for name, value in headers.items())
    assert error_of(lambda: s3.get_object(Bucket=bucket, Key="three", PartNumber=4)
                    )[:2] == ("InvalidPartNumber", 416)
    assert error_of(lambda: s3.head_object(Bucket=bucket, Key="three", PartNumber=4))[1] \
        == 416
    assert error_of(lambda: s3.get_object(Bucket=bucket, Key="three", PartNumber=0)
                    )[:2] == ("InvalidArgument", 400)
    assert error_of(lambda: s3.get_object(Bucket=bucket, Key="three", PartNumber=1,
                                          Range="bytes=0-1"))[:2] == ("InvalidRequest", 400)
    assert error_of(lambda: s3.get_object(Bucket=bucket, Key="three", PartNumber=2,
                                          IfNoneMatch=etag))[1] == 304

    # An object stored in one piece: part 1 is all of it (a plain 200), there is no part 2.
    s3.put_object(Bucket=bucket, Key="single", Body=b"just one piece")
    got = s3.get_object(Bucket=bucket, Key="single", PartNumber=1)
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert got["Body"].read() == b"just one piece"
    assert "PartsCount" not in got and "ContentRange" not in got
    head = s3.head_object(Bucket=bucket, Key="single", PartNumber=1)
    assert (head["ResponseMetadata"]["HTTPStatusCode"], head["ContentLength"]) == (200, 14)
    assert error_of(lambda: s3.get_object(Bucket=bucket, Key="single", PartNumber=2)
                    )[:2] == ("InvalidPartNumber", 416)

    # A copy keeps the -3 ETag (no byte is read to make another), so it keeps the parts.
    s3.copy_object(Bucket=bucket, Key="copied", CopySource=f"{bucket}/three")
    s3.copy_object(Bucket=bucket, Key="replaced", CopySource=f"{bucket}/three",
                   MetadataDirective="REPLACE", Metadata={"r": "2"})
    for key in ("copied", "replaced"):
        head = s3.head_object(Bucket=bucket, Key=key, PartNumber=2)
        assert (head["ETag"], head["PartsCount"], head["ContentLength"]) \
            == (etag, 3, 5 * MIB), key
    assert s3.head_object(Bucket=bucket, Key="replaced")["Metadata"] == {"r": "2"}

    # UploadPartCopy of the whole multipart object reads it (for the MD5), stores nothing.
    files = gateway.chunk_files()
    upload = s3.create_multipart_upload(Bucket=bucket, Key="again")["UploadId"]
    copied = s3.upload_part_copy(Bucket=bucket, Key="again", UploadId=upload, PartNumber=1,
                                 CopySource=f"{bucket}/three")
    assert copied["CopyPartResult"]["ETag"] == quoted_md5(b"".join(parts))
    assert gateway.chunk_files() == files
    s3.abort_multipart_upload(Bucket=bucket, Key="again", UploadId=upload)


# -- listing -----------------------------------------------------------------------------


def test_list_multipart_uploads_pages_and_groups(s3: Any, bucket: str,
                                                 new_bucket_name: Callable[[], str]) -> None:
    created = [(key, s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"])
               for key in ("b", "a/1", "b", "a/2", "a/1")]
    expected = sorted(created, key=lambda upload: upload[0])  # stable: by start in a key
    elsewhere = new_bucket_name()
    s3.create_bucket(Bucket=elsewhere)
    s3.create_multipart_upload(Bucket=elsewhere, Key="a/1")

    def listing(**params: Any) -> dict:
        return s3.list_multipart_uploads(Bucket=bucket, **params)

    def pairs(page: dict) -> list[tuple[str, str]]:
        return [(u["Key"], u["UploadId"]) for u in page.get("Uploads", [])]

    def walk(**params: Any) -> list[dict]:
        pages, markers = [], {}
        while True:
            pages.append(listing(**params, **markers))
            if not pages[-1]["IsTruncated"]:
                return pages
            markers = {"KeyMarker": pages[-1]["NextKeyMarker"],
                       "UploadIdMarker": pages[-1]["NextUploadIdMarker"]}

    pages = walk(MaxUploads=2)
    assert [pairs(p) for p in pages] == [expected[0:2], expected[2:4], expected[4:]]
    assert [p["IsTruncated"] for p in pages] == [True, True, False]
    assert (pages[0]["NextKeyMarker"], pages[0]["NextUploadIdMarker"]) == expected[1]
    assert pages[0]["MaxUploads"] == 2
    paginator = s3.get_paginator("list_multipart_uploads")
    assert [pair for page in paginator.paginate(Bucket=bucket, PaginationConfig={
        "PageSize": 2}) for pair in pairs(page)] == expected

    assert pairs(listing(Prefix="a/")) == expected[:3]
    grouped = listing(Delimiter="/")
    assert pairs(grouped) == expected[3:]
    assert grouped["CommonPrefixes"] == [{"Prefix": "a/"}]
    pages = walk(Delimiter="/", MaxUploads=1)  # a common prefix counts once, never twice
    assert [(pairs(p), p.get("CommonPrefixes", [])) for p in pages] == [
        ([], [{"Prefix": "a/"}]), ([expected[3]], []), ([expected[4]], [])]
    assert pairs(listing(KeyMarker="a/1")) == expected[2:]
    assert pairs(listing(KeyMarker="a/1", UploadIdMarker=expected[0][1])) == expected[1:]
    assert pairs(listing(UploadIdMarker=expected[0][1])) == expected  # needs a key-marker
    assert listing(MaxUploads=5000)["MaxUploads"] == 1000
    assert error_of(lambda: listing(MaxUploads=-1))[:2] == ("InvalidArgument", 400)

    odd = s3.create_multipart_upload(Bucket=bucket, Key="c d/é")["UploadId"]
    encoded = listing(Prefix="c ", EncodingType="url")
    assert pairs(encoded) == [("c%20d/%C3%A9", odd)]
    assert (encoded["EncodingType"], encoded["Prefix"]) == ("url", "c%20")
    for key, upload in [*created, ("c d/é", odd)]:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
    assert listing().get("Uploads", []) == []


def test_list_parts_pages(s3: Any, bucket: str) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key="parts")["UploadId"]
    numbers = [1, 2, 3, 5, 8, 13, 21]
    etags = {n: s3.upload_part(Bucket=bucket, Key="parts", UploadId=upload, PartNumber=n,
                               Body=b"part %d" % n)["ETag"] for n in numbers}

    def listing(**params: Any) -> dict:
        return s3.list_parts(Bucket=bucket, Key="parts", UploadId=upload, **params)

    pages, marker = [listing(MaxParts=3)], {}
    while pages[-1]["IsTruncated"]:
        marker = {"PartNumberMarker": pages[-1]["NextPartNumberMarker"]}
        pages.append(listing(MaxParts=3, **marker))
    assert [[p["PartNumber"] for p in page["Parts"]] for page in pages] == [
        [1, 2, 3], [5, 8, 13], [21]]
    assert [(page["IsTruncated"], page["NextPartNumberMarker"]) for page in pages] == [
        (True, 3), (True, 13), (False, 21)]
    assert all((p["ETag"], p["Size"]) == (etags[p["PartNumber"]], len(b"part %d" % p[
        "PartNumber"])) for page in pages for p in page["Parts"])
    paginator = s3.get_paginator("list_parts")
    assert [p["PartNumber"] for page in paginator.paginate(
        Bucket=bucket, Key="parts", UploadId=upload, PaginationConfig={"PageSize": 3})
        for p in page["Parts"]] == numbers
    assert [p["PartNumber"] for p in listing(PartNumberMarker=4, MaxParts=2)["Parts"]] \
        == [5, 8]
    last = listing(PartNumberMarker=21)
    assert last.get("Parts", []) == [] and not last["IsTruncated"]
    assert error_of(lambda: listing(MaxParts=-1))[:2] == ("InvalidArgument", 400)
    s3.abort_multipart_upload(Bucket=bucket, Key="parts", UploadId=upload)


def test_list_parts_beyond_one_page_of_1000(s3: Any, bucket: str) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key="many")["UploadId"]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: s3.upload_part(Bucket=bucket, Key="many", UploadId=upload,
                                               PartNumber=n, Body=b"%d" % n), range(1, 1006)))

    def listing(**params: Any) -> dict:
        return s3.list_parts(Bucket=bucket, Key="many", UploadId=upload, **params)

    first = listing()
    assert [p["PartNumber"] for p in first["Parts"]] == list(range(1, 1001))
    assert (first["IsTruncated"], first["NextPartNumberMarker"], first["MaxParts"]) \
        == (True, 1000, 1000)
    second = listing(PartNumberMarker=1000)
    assert [p["PartNumber"] for p in second["Parts"]] == list(range(1001, 1006))
    assert not second["IsTruncated"]
    assert listing(MaxParts=5000)["MaxParts"] == 1000
    s3.abort_multipart_upload(Bucket=bucket, Key="many", UploadId=upload)
    assert error_of(listing)[:2] == ("NoSuchUpload", 404)


# -- expiry (the gateway's own test is test_serve.py::test_abandoned_multipart_uploads_expire)


def test_expiry_spares_young_uploads_and_finds_uploads_past_1000_parts(
        tmp_path: Path) -> None:
    """Over a real manifest: an old upload with 1,500 parts (more than a listing page, so
    the scan must jump past them) expires with its parts; a young one after it stays."""
    now = time.time()
    old, young = new_upload_id(now - 100), new_upload_id(now)
    meta = {"bucket": "b", "key": "k", "owner": "o"}
    operations: list[tuple[str, list]] = [
        ("put_object", [ObjectRecord(UPLOADS, upload, 0, "", created, "", meta)])
        for upload, created in ((old, now - 100), (young, now))]
    operations += [("put_object", [ObjectRecord(UPLOADS, f"{old}/{n:05d}", 1, "e", now)])
                   for n in range(1, 1501)]
    with Manifest(tmp_path / "manifest.db") as manifest:
        manifest.create_bucket(BucketRecord(UPLOADS, "", now, ""))
        assert not any(manifest.apply_batch(operations))
        assert [r.key for r in iter_uploads(manifest)] == [old, young]
        assert expire_uploads(manifest, now - 50) == 1
        assert [r.key for r in iter_uploads(manifest)] == [young]
        assert manifest.list_objects(UPLOADS, prefix=f"{old}/") == []
        assert expire_uploads(manifest, now - 50) == 0


def test_complete_with_a_full_object_checksum_header(s3: Any, bucket: str) -> None:
    """The x-amz-checksum-* of CompleteMultipartUpload describes the object, not the XML
    body: it must not be checked against the body (it was: BadDigest)."""
    import base64

    import google_crc32c

    data = random.Random(21).randbytes(6 * 1024 * 1024 + 5)
    upload = s3.create_multipart_upload(Bucket=bucket, Key="full", ChecksumAlgorithm="CRC32C",
                                        ChecksumType="FULL_OBJECT")["UploadId"]
    parts = []
    for number, piece in enumerate((data[:5 * 1024 * 1024], data[5 * 1024 * 1024:]), 1):
        etag = s3.upload_part(Bucket=bucket, Key="full", UploadId=upload, PartNumber=number,
                              Body=piece, ChecksumAlgorithm="CRC32C")["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    whole = base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()
    s3.complete_multipart_upload(Bucket=bucket, Key="full", UploadId=upload,
                                 MultipartUpload={"Parts": parts}, ChecksumCRC32C=whole,
                                 ChecksumType="FULL_OBJECT")
    assert s3.get_object(Bucket=bucket, Key="full")["Body"].read() == data
