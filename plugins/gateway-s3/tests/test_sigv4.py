"""Signature V4 against the worked examples in Amazon's S3 documentation, and a signed
``aws-chunked`` upload (``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``) through the real server,
framed and signed by the test itself from botocore's seed signature."""

from __future__ import annotations

import hashlib
import hmac
import http.client
from typing import Any

import pytest
from enigma_gateway_s3 import sigv4
from enigma_gateway_s3.body import AwsChunked
from enigma_gateway_s3.errors import S3Error
from gateway_support import ACCESS_KEY, SECRET_KEY, Gateway

# From "Signature Calculations for the Authorization Header" (Amazon S3 API reference).
DOC_KEY = "AKIAIOSFODNN7EXAMPLE"
DOC_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
DOC_NOW = sigv4.parse_amz_date("20130524T000000Z")
DOC_SCOPE = f"{DOC_KEY}/20130524/us-east-1/s3/aws4_request"
SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
CHUNK_SIGNATURES = (
    "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
    "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
    "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
)


def doc_get_request(signature: str) -> sigv4.Request:
    return sigv4.Request("GET", "/test.txt", [], {
        "host": "examplebucket.s3.amazonaws.com",
        "range": "bytes=0-9",
        "x-amz-content-sha256": sigv4.EMPTY_SHA256,
        "x-amz-date": "20130524T000000Z",
        "authorization": f"AWS4-HMAC-SHA256 Credential={DOC_SCOPE},"
                         "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
                         f"Signature={signature}"})


def streaming_request() -> sigv4.Request:
    return sigv4.Request("PUT", "/examplebucket/chunkObject.txt", [], {
        "host": "s3.amazonaws.com", "x-amz-date": "20130524T000000Z",
        "x-amz-storage-class": "REDUCED_REDUNDANCY",
        "x-amz-content-sha256": sigv4.STREAMING_SIGNED, "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": "66560", "content-length": "66824",
        "authorization": f"AWS4-HMAC-SHA256 Credential={DOC_SCOPE},SignedHeaders="
                         "content-encoding;content-length;host;x-amz-content-sha256;"
                         "x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,"
                         f"Signature={SEED}"})


def test_documented_get_example_verifies() -> None:
    good = "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    auth = sigv4.verify(doc_get_request(good), {DOC_KEY: DOC_SECRET}, now=DOC_NOW)
    assert auth.access_key == DOC_KEY
    with pytest.raises(S3Error) as info:
        sigv4.verify(doc_get_request("0" * 64), {DOC_KEY: DOC_SECRET}, now=DOC_NOW)
    assert info.value.code == "SignatureDoesNotMatch"
    with pytest.raises(S3Error) as info:
        sigv4.verify(doc_get_request(good), {DOC_KEY: DOC_SECRET}, now=DOC_NOW + 16 * 60)
    assert info.value.code == "RequestTimeTooSkewed"
    with pytest.raises(S3Error) as info:
        sigv4.verify(doc_get_request(good), {"OTHER": DOC_SECRET}, now=DOC_NOW)
    assert info.value.code == "InvalidAccessKeyId"


def framed(pieces: list[bytes], signatures: tuple[str, ...]) -> bytes:
    out = b""
    for piece, signature in zip([*pieces, b""], signatures, strict=True):
        out += f"{len(piece):x};chunk-signature={signature}\r\n".encode() + piece + b"\r\n"
    return out


def test_documented_chunked_upload_decodes_and_verifies() -> None:
    auth = sigv4.verify(streaming_request(), {DOC_KEY: DOC_SECRET}, now=DOC_NOW)
    assert auth.seed_signature == SEED
    pieces = [b"a" * 65536, b"a" * 1024]
    body = framed(pieces, CHUNK_SIGNATURES)
    assert len(body) == 66824

    def decode(data: bytes, step: int) -> bytes:
        feed = [data[i:i + step] for i in range(0, len(data), step)]
        decoder = AwsChunked(lambda: feed.pop(0) if feed else b"", auth)
        out = b""
        while piece := decoder.read_piece():
            out += piece
        return out

    for step in (1, 7, 4096, len(body)):  # any split of the wire bytes
        assert decode(body, step) == b"a" * 66560
    tampered = framed([b"a" * 65535 + b"b", b"a" * 1024], CHUNK_SIGNATURES)
    with pytest.raises(S3Error) as info:
        decode(tampered, 1000)
    assert info.value.code == "SignatureDoesNotMatch"
    truncated = body[:-20]
    with pytest.raises(S3Error) as info:
        decode(truncated, 1000)
    assert info.value.code == "IncompleteBody"


def test_signed_streaming_put_through_the_server(gateway: Gateway, s3: Any,
                                                 bucket: str) -> None:
    from botocore.auth import SigV4Auth  # the S3 signer would overwrite the payload mode
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    data = bytes(range(256)) * 1000  # 256,000 bytes in 3 chunks
    pieces = [data[:100_000], data[100_000:200_000], data[200_000:]]
    host = f"127.0.0.1:{gateway.port}"
    url = f"{gateway.url}/{bucket}/streamed"
    size = sum(len(f"{len(p):x};chunk-signature=".encode()) + 64 + 4 + len(p)
               for p in [*pieces, b""])
    request = AWSRequest("PUT", url, headers={
        "Host": host, "Content-Encoding": "aws-chunked", "Content-Length": str(size),
        "X-Amz-Content-SHA256": sigv4.STREAMING_SIGNED,
        "X-Amz-Decoded-Content-Length": str(len(data))})
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", "us-east-1").add_auth(request)
    seed = request.headers["Authorization"].rsplit("Signature=", 1)[1]
    amz_date = request.headers["X-Amz-Date"]
    scope = f"{amz_date[:8]}/us-east-1/s3/aws4_request"
    key = hmac.new(f"AWS4{SECRET_KEY}".encode(), amz_date[:8].encode(), "sha256").digest()
    for part in ("us-east-1", "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), "sha256").digest()
    signatures, previous = [], seed
    for piece in [*pieces, b""]:
        text = "\n".join(("AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, previous,
                          hashlib.sha256(b"").hexdigest(), hashlib.sha256(piece).hexdigest()))
        previous = hmac.new(key, text.encode(), "sha256").hexdigest()
        signatures.append(previous)

    def send(body: bytes) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
        try:
            conn.request("PUT", f"/{bucket}/streamed", body=body,
                         headers=dict(request.headers.items()))
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    body = framed(pieces, tuple(signatures))
    assert len(body) == size
    status, text = send(body)
    assert status == 200, text
    got = s3.get_object(Bucket=bucket, Key="streamed")
    assert got["Body"].read() == data
    assert got["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    assert got.get("ContentEncoding") is None  # the framing is never stored
    bad = framed([pieces[0], pieces[1][:-1] + b"!", pieces[2]], tuple(signatures))
    status, text = send(bad)
    assert status == 403 and b"SignatureDoesNotMatch" in text
    assert s3.get_object(Bucket=bucket, Key="streamed")["Body"].read() == data


def test_unsigned_trailer_upload_checks_the_checksum(gateway: Gateway, s3: Any,
                                                     bucket: str) -> None:
    """``STREAMING-UNSIGNED-PAYLOAD-TRAILER``: aws-chunked without chunk signatures and an
    ``x-amz-checksum-crc32`` trailer (what newer SDKs send over TLS)."""
    import base64
    import zlib

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    data = b"trailer payload " * 5000
    pieces = [data[:50_000], data[50_000:]]

    def body_for(crc: int) -> bytes:
        out = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces)
        value = base64.b64encode(crc.to_bytes(4, "big")).decode()
        return out + f"0\r\nx-amz-checksum-crc32:{value}\r\n\r\n".encode()

    def put(body: bytes) -> tuple[int, bytes]:
        request = AWSRequest("PUT", f"{gateway.url}/{bucket}/trailed", headers={
            "Host": f"127.0.0.1:{gateway.port}", "Content-Encoding": "aws-chunked",
            "Content-Length": str(len(body)), "X-Amz-Trailer": "x-amz-checksum-crc32",
            "X-Amz-Content-SHA256": sigv4.STREAMING_UNSIGNED_TRAILER,
            "X-Amz-Decoded-Content-Length": str(len(data))})
        SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", "us-east-1").add_auth(request)
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
        try:
            conn.request("PUT", f"/{bucket}/trailed", body=body,
                         headers=dict(request.headers.items()))
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    status, text = put(body_for(zlib.crc32(data) ^ 1))
    assert status == 400 and b"BadDigest" in text
    status, text = put(body_for(zlib.crc32(data)))
    assert status == 200, text
    assert s3.get_object(Bucket=bucket, Key="trailed")["Body"].read() == data
