"""Every S3 checksum and the signed-trailer payload mode, against a real ``enigma serve``.

Expected checksums come from independent code where it exists (zlib, hashlib,
google-crc32c) and from published test vectors otherwise; signed requests are framed by the
test itself, whose chunk and trailer signing is first checked against the worked example
of Amazon's "Signature calculations for trailing headers" page.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import google_crc32c
import pytest
from awscrt import checksums as crt
from enigma_gateway_s3 import sigv4
from enigma_gateway_s3.body import CHECKSUMS, open_body
from enigma_gateway_s3.errors import S3Error
from gateway_support import ACCESS_KEY, SECRET_KEY, Gateway, error_of

# The worked example of "Signature calculations for trailing headers (chunked uploads)".
DOC_KEY = "AKIAIOSFODNN7EXAMPLE"
DOC_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
DOC_DATE = "20130524T000000Z"
DOC_SCOPE = "20130524/us-east-1/s3/aws4_request"
DOC_SEED = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e"
DOC_CHUNK_SIGNATURES = ["b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
                        "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
                        "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992"]
DOC_TRAILER = {"x-amz-checksum-crc32c": "sOO8/Q=="}
DOC_TRAILER_SIGNATURE = "d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435"
DOC_PIECES = [b"a" * 65536, b"a" * 1024]


# -- the test's own signer and framing (independent of the gateway's code) --------------


def signing_key(secret: str, date: str) -> bytes:
    key = hmac.new(f"AWS4{secret}".encode(), date.encode(), "sha256").digest()
    for part in ("us-east-1", "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), "sha256").digest()
    return key


def hmac_hex(key: bytes, *lines: str) -> str:
    return hmac.new(key, "\n".join(lines).encode(), "sha256").hexdigest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Signer:
    """Chunk and trailer signatures chained from a seed, as the AWS documentation says."""

    def __init__(self, key: bytes, amz_date: str, scope: str, seed: str) -> None:
        self.key, self.amz_date, self.scope, self.previous = key, amz_date, scope, seed

    def chunk(self, data: bytes) -> str:
        self.previous = hmac_hex(self.key, "AWS4-HMAC-SHA256-PAYLOAD", self.amz_date,
                                 self.scope, self.previous, sha256_hex(b""), sha256_hex(data))
        return self.previous

    def trailer(self, trailers: Mapping[str, str]) -> str:
        canonical = "".join(f"{name}:{value}\n" for name, value in sorted(trailers.items()))
        return hmac_hex(self.key, "AWS4-HMAC-SHA256-TRAILER", self.amz_date, self.scope,
                        self.previous, sha256_hex(canonical.encode()))


def frame(pieces: list[bytes], signer: Signer | None, trailers: Mapping[str, str],
          trailer_signature: str | None = None) -> bytes:
    """aws-chunked: signed chunks when a signer is given, then the trailer lines and, when
    signed, ``x-amz-trailer-signature`` (the computed one unless another is given)."""
    out = bytearray()
    for piece in [*pieces, b""]:
        extension = f";chunk-signature={signer.chunk(piece)}" if signer else ""
        out += f"{len(piece):x}{extension}\r\n".encode() + piece
        out += b"\r\n" if piece else b""
    for name, value in trailers.items():
        out += f"{name}:{value}\r\n".encode()
    if signer is not None and trailer_signature != "":
        signature = trailer_signature or signer.trailer(trailers)
        out += f"x-amz-trailer-signature:{signature}\r\n".encode()
    return bytes(out + b"\r\n")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def crc32c_b64(data: bytes) -> str:
    """CRC32C by google-crc32c, not by the awscrt code the gateway uses."""
    return b64(google_crc32c.value(data).to_bytes(4, "big"))


# -- the algorithms against published vectors and independent implementations ----------


def digest(name: str, pieces: list[bytes]) -> bytes:
    hasher = CHECKSUMS[name][0]()
    for piece in pieces:
        hasher.update(piece)
    out = hasher.digest()
    assert len(out) == CHECKSUMS[name][1]
    return out


def test_checksum_algorithms_match_published_vectors() -> None:
    check = b"123456789"  # the CRC catalogue's check input
    assert digest("crc64nvme", [check]).hex() == "ae8b14860a799888"
    assert digest("crc32c", [check]).hex() == "e3069283"
    assert digest("crc32", [check]).hex() == "cbf43926"
    # xxHash's reference values for the empty input.
    assert digest("xxhash64", []).hex() == "ef46db3751d8e999"
    assert digest("xxhash3", []).hex() == "2d06800538d394c2"
    assert digest("xxhash128", []).hex() == "99aa06d3014798d86001c324468d497f"
    data = bytes(range(256)) * 4099  # pieces must chain: hashed in parts == hashed whole
    pieces = [data[:1], data[1:70_000], data[70_000:]]
    assert digest("crc32c", pieces) == google_crc32c.value(data).to_bytes(4, "big")
    assert digest("crc32", pieces) == zlib.crc32(data).to_bytes(4, "big")
    assert digest("crc64nvme", pieces) == crt.crc64nvme(data).to_bytes(8, "big")
    for name in ("md5", "sha1", "sha256", "sha512"):
        assert digest(name, pieces) == hashlib.new(name, data).digest()
    assert digest("xxhash3", pieces) == crt.XXHash.compute_xxhash3_64(data)


# -- the documented signed-trailer example through the decoder --------------------------


def doc_request() -> sigv4.Request:
    signed = ("content-encoding;host;x-amz-content-sha256;x-amz-date;"
              "x-amz-decoded-content-length;x-amz-storage-class;x-amz-trailer")
    return sigv4.Request("PUT", "/examplebucket/chunkObject.txt", [], {
        "host": "s3.amazonaws.com", "x-amz-date": DOC_DATE,
        "x-amz-storage-class": "REDUCED_REDUNDANCY",
        "x-amz-content-sha256": sigv4.STREAMING_SIGNED_TRAILER,
        "content-encoding": "aws-chunked", "x-amz-decoded-content-length": "66560",
        "x-amz-trailer": "x-amz-checksum-crc32c",
        "authorization": f"AWS4-HMAC-SHA256 Credential={DOC_KEY}/{DOC_SCOPE},"
                         f"SignedHeaders={signed},Signature={DOC_SEED}"})


def decode(body: bytes, request: sigv4.Request, auth: sigv4.Auth, step: int = 4096) -> bytes:
    feed = [body[i:i + step] for i in range(0, len(body), step)]
    payload = open_body(lambda: feed.pop(0) if feed else b"", request.headers, auth)
    data = payload.read()
    payload.finish()
    return data


def code_of(call: Callable[[], Any]) -> str:
    with pytest.raises(S3Error) as info:
        call()
    return info.value.code


def test_documented_signed_trailer_example() -> None:
    # The test's signer reproduces Amazon's numbers, so the framed uploads below are right.
    signer = Signer(signing_key(DOC_SECRET, "20130524"), DOC_DATE, DOC_SCOPE, DOC_SEED)
    assert [signer.chunk(p) for p in [*DOC_PIECES, b""]] == DOC_CHUNK_SIGNATURES
    assert signer.trailer(DOC_TRAILER) == DOC_TRAILER_SIGNATURE
    assert crc32c_b64(b"".join(DOC_PIECES)) == DOC_TRAILER["x-amz-checksum-crc32c"]

    request = doc_request()
    now = sigv4.parse_amz_date(DOC_DATE)
    auth = sigv4.verify(request, {DOC_KEY: DOC_SECRET}, now=now)

    def body(**kwargs: Any) -> bytes:
        trailers = kwargs.pop("trailers", DOC_TRAILER)
        fresh = Signer(signing_key(DOC_SECRET, "20130524"), DOC_DATE, DOC_SCOPE, DOC_SEED)
        return frame(kwargs.pop("pieces", DOC_PIECES), fresh, trailers, **kwargs)

    good = body()
    assert len(good) == 66946  # (the page's Content-Length, 66824, leaves the trailer out)
    for step in (1, 97, 4096, len(good)):  # any split of the wire bytes
        assert decode(good, request, auth, step) == b"a" * 66560
    assert DOC_TRAILER_SIGNATURE.encode() in good
    swapped = good.replace(b"sOO8/Q==", b"AAAAAA==")  # the signature covers the value
    assert code_of(lambda: decode(swapped, request, auth)) == "SignatureDoesNotMatch"
    assert code_of(lambda: decode(body(trailer_signature="0" * 64), request,
                                  auth)) == "SignatureDoesNotMatch"
    assert code_of(lambda: decode(body(trailer_signature=""), request,
                                  auth)) == "SignatureDoesNotMatch"
    wrong = {"x-amz-checksum-crc32c": "AAAAAA=="}  # correctly signed, wrong checksum
    assert code_of(lambda: decode(body(trailers=wrong), request, auth)) == "BadDigest"
    other = {"x-amz-checksum-crc32": b64(zlib.crc32(b"a" * 66560).to_bytes(4, "big"))}
    assert code_of(lambda: decode(body(trailers=other), request,
                                  auth)) == "MalformedTrailerError"
    tampered = body(pieces=[b"a" * 65535 + b"b", b"a" * 1024])
    tampered = tampered.replace(b"a" * 65535 + b"b", b"a" * 65536)
    assert code_of(lambda: decode(tampered, request, auth)) == "SignatureDoesNotMatch"


# -- through the server ----------------------------------------------------------------


def send(gateway: Gateway, method: str, path: str, headers: dict[str, str],
         body: bytes) -> tuple[int, bytes]:
    """Sign the headers with botocore's plain SigV4 signer (it keeps the payload mode the
    test chose) and send them with ``body`` as is."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method, f"{gateway.url}{path}",
                         headers={"Host": f"127.0.0.1:{gateway.port}", **headers})
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", "us-east-1").add_auth(request)
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=dict(request.headers.items()))
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def put_plain(gateway: Gateway, bucket: str, key: str, data: bytes,
              checksums: Mapping[str, str]) -> tuple[int, bytes]:
    headers = {"X-Amz-Content-SHA256": sha256_hex(data), **checksums}
    return send(gateway, "PUT", f"/{bucket}/{key}", headers, data)


def absent(s3: Any, bucket: str, key: str) -> bool:
    return error_of(lambda: s3.head_object(Bucket=bucket, Key=key))[1] == 404


ALGORITHMS = ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256", "SHA512", "XXHASH64",
              "XXHASH3", "XXHASH128"]


def independent(algorithm: str, data: bytes) -> bytes | None:
    """The checksum by code other than the gateway's, where such code is at hand."""
    others: dict[str, Callable[[bytes], bytes]] = {
        "crc32": lambda d: zlib.crc32(d).to_bytes(4, "big"),
        "crc32c": lambda d: google_crc32c.value(d).to_bytes(4, "big"),
        "sha1": lambda d: hashlib.sha1(d).digest(),
        "sha256": lambda d: hashlib.sha256(d).digest(),
        "sha512": lambda d: hashlib.sha512(d).digest(),
    }
    return others[algorithm](data) if algorithm in others else None


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_boto3_put_with_each_checksum(s3: Any, bucket: str, algorithm: str) -> None:
    data = b"checksummed by boto3 " * 3000 + algorithm.encode()
    sent: dict[str, str] = {}
    s3.meta.events.register("before-send.s3.PutObject", lambda request, **_: sent.update(
        {k.lower(): v.decode() if isinstance(v, bytes) else v
         for k, v in request.headers.items()}))
    s3.put_object(Bucket=bucket, Key="k", Body=data, ChecksumAlgorithm=algorithm)
    header = f"x-amz-checksum-{algorithm.lower()}"
    assert header in sent or sent.get("x-amz-trailer") == header, sent
    expected = independent(algorithm.lower(), data)
    if header in sent and expected is not None:
        assert sent[header] == b64(expected)
    got = s3.get_object(Bucket=bucket, Key="k")
    assert got["Body"].read() == data
    assert got["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'


def test_boto3_multipart_part_checksum(s3: Any, bucket: str) -> None:
    data = b"one part " * 10_000
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp", ChecksumAlgorithm="CRC64NVME")
    part = s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload["UploadId"], PartNumber=1,
                          Body=data, ChecksumAlgorithm="CRC64NVME")
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload["UploadId"],
                                 MultipartUpload={"Parts": [{"PartNumber": 1,
                                                             "ETag": part["ETag"]}]})
    assert s3.get_object(Bucket=bucket, Key="mp")["Body"].read() == data


@pytest.mark.parametrize("name", ["crc32c", "crc64nvme"])
def test_wrong_checksum_header_is_bad_digest(gateway: Gateway, s3: Any, bucket: str,
                                             name: str) -> None:
    data = b"raw signed put " * 2000
    right = b64(crt.crc64nvme(data).to_bytes(8, "big")) if name == "crc64nvme" \
        else crc32c_b64(data)
    raw = bytearray(base64.b64decode(right))
    raw[-1] ^= 1
    status, text = put_plain(gateway, bucket, "bad", data, {f"x-amz-checksum-{name}": b64(raw)})
    assert status == 400 and b"<Code>BadDigest</Code>" in text, text
    assert absent(s3, bucket, "bad")
    status, text = put_plain(gateway, bucket, "good", data, {f"x-amz-checksum-{name}": right})
    assert status == 200, text
    assert s3.get_object(Bucket=bucket, Key="good")["Body"].read() == data


def test_malformed_unknown_and_double_checksums_are_refused(gateway: Gateway, s3: Any,
                                                            bucket: str) -> None:
    data = b"refused " * 100
    refused = [
        {"x-amz-checksum-crc32c": b64(b"\0" * 8)},  # a CRC32C is 4 bytes
        {"x-amz-checksum-crc64nvme": "not base64!"},
        {"x-amz-checksum-crc16": "AAA="},  # no such algorithm: never stored unverified
        {"x-amz-checksum-crc32c": crc32c_b64(data),
         "x-amz-checksum-sha1": b64(hashlib.sha1(data).digest())},
    ]
    for checksums in refused:
        status, text = put_plain(gateway, bucket, "k", data, checksums)
        assert status == 400 and b"<Code>InvalidRequest</Code>" in text, (checksums, text)
    assert absent(s3, bucket, "k")
    status, _ = put_plain(gateway, bucket, "k", data, {"x-amz-checksum-type": "FULL_OBJECT"})
    assert status == 200  # names no checksum


def put_chunked(gateway: Gateway, bucket: str, key: str, data: bytes, mode: str,
                trailer: str, body_for: Callable[[Signer], bytes]) -> tuple[int, bytes]:
    """A PUT in an aws-chunked ``mode``; ``body_for`` frames the body once the seed
    signature (the Authorization header's) is known."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    headers = {"Host": f"127.0.0.1:{gateway.port}", "Content-Encoding": "aws-chunked",
               "X-Amz-Content-SHA256": mode, "X-Amz-Decoded-Content-Length": str(len(data))}
    if trailer:
        headers["X-Amz-Trailer"] = trailer
    request = AWSRequest("PUT", f"{gateway.url}/{bucket}/{key}", headers=headers)
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", "us-east-1").add_auth(request)
    amz_date = request.headers["X-Amz-Date"]
    seed = request.headers["Authorization"].rsplit("Signature=", 1)[1]
    signer = Signer(signing_key(SECRET_KEY, amz_date[:8]), amz_date,
                    f"{amz_date[:8]}/us-east-1/s3/aws4_request", seed)
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    try:
        conn.request("PUT", f"/{bucket}/{key}", body=body_for(signer),
                     headers=dict(request.headers.items()))
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_signed_trailer_upload_through_the_server(gateway: Gateway, s3: Any,
                                                  bucket: str) -> None:
    data = bytes(range(256)) * 1200  # 307,200 bytes in 4 chunks
    pieces = [data[i:i + 100_000] for i in range(0, len(data), 100_000)]
    good = {"x-amz-checksum-crc32c": crc32c_b64(data)}
    mode, trailer = sigv4.STREAMING_SIGNED_TRAILER, "x-amz-checksum-crc32c"

    def put(key: str, body_for: Callable[[Signer], bytes]) -> tuple[int, bytes]:
        return put_chunked(gateway, bucket, key, data, mode, trailer, body_for)

    status, text = put("signed", lambda s: frame(pieces, s, good))
    assert status == 200, text
    got = s3.get_object(Bucket=bucket, Key="signed")
    assert got["Body"].read() == data
    assert got["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    assert got.get("ContentEncoding") is None  # the framing is never stored

    def bad_chunk(signer: Signer) -> bytes:
        body = frame(pieces, signer, good)
        return body.replace(pieces[1][:50], pieces[1][:49] + b"!", 1)

    wrong = {"x-amz-checksum-crc32c": b64(b"\0\0\0\0")}
    failures = {
        "bad-trailer-signature": (lambda s: frame(pieces, s, good, "f" * 64),
                                  403, "SignatureDoesNotMatch"),
        "no-trailer-signature": (lambda s: frame(pieces, s, good, ""),
                                 403, "SignatureDoesNotMatch"),
        "bad-chunk-signature": (bad_chunk, 403, "SignatureDoesNotMatch"),
        "bad-trailer-checksum": (lambda s: frame(pieces, s, wrong), 400, "BadDigest"),
        "no-trailer": (lambda s: frame(pieces, s, {}), 400, "MalformedTrailerError"),
    }
    for key, (body_for, want_status, want_code) in failures.items():
        status, text = put(key, body_for)
        assert (status, f"<Code>{want_code}</Code>".encode() in text) == (want_status, True), \
            (key, status, text)
        assert absent(s3, bucket, key), key


def test_signed_trailer_with_crc64nvme(gateway: Gateway, s3: Any, bucket: str) -> None:
    data = b"crc64nvme trailer " * 10_000
    value = b64(crt.crc64nvme(data).to_bytes(8, "big"))
    pieces = [data[:65536], data[65536:]]
    status, text = put_chunked(
        gateway, bucket, "k", data, sigv4.STREAMING_SIGNED_TRAILER, "x-amz-checksum-crc64nvme",
        lambda s: frame(pieces, s, {"x-amz-checksum-crc64nvme": value}))
    assert status == 200, text
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == data


def test_trailers_need_a_trailer_mode(gateway: Gateway, s3: Any, bucket: str) -> None:
    """A trailer is refused where it could not be signed or cannot exist, and a trailer
    that was not announced is malformed, as S3 answers."""
    data = b"no trailer here " * 1000
    trailer = {"x-amz-checksum-crc32c": crc32c_b64(data)}
    status, text = put_chunked(gateway, bucket, "signed", data, sigv4.STREAMING_SIGNED,
                               "x-amz-checksum-crc32c", lambda s: frame([data], s, {}))
    assert status == 400 and b"<Code>InvalidRequest</Code>" in text, text
    status, text = put_chunked(gateway, bucket, "unannounced", data,
                               sigv4.STREAMING_UNSIGNED_TRAILER, "",
                               lambda s: frame([data], None, trailer))
    assert status == 400 and b"<Code>MalformedTrailerError</Code>" in text, text
    status, text = put_plain(gateway, bucket, "plain", data,
                             {"x-amz-trailer": "x-amz-checksum-crc32c"})
    assert status == 400 and b"<Code>InvalidRequest</Code>" in text, text
    for key in ("signed", "unannounced", "plain"):
        assert absent(s3, bucket, key), key
    status, text = put_chunked(gateway, bucket, "unsigned", data,
                               sigv4.STREAMING_UNSIGNED_TRAILER, "x-amz-checksum-crc32c",
                               lambda s: frame([data[:5000], data[5000:]], None, trailer))
    assert status == 200, text
    assert s3.get_object(Bucket=bucket, Key="unsigned")["Body"].read() == data
