"""Request bodies as file objects on a worker thread, verified while they stream.

``pull`` hands over the next piece of the HTTP body (b"" at the end); it runs the ASGI
``receive`` on the event loop, so nothing here ever holds more than one piece plus the
reader's buffer. ``AwsChunked`` strips the ``aws-chunked`` framing (checking each chunk
signature for ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]``, and the trailer signature
for the latter); ``Payload`` hashes what passes through (MD5 for the ETag, SHA-256 for a
signed payload, the one ``x-amz-checksum-*`` a request may carry, as a header or a trailer)
and ``finish`` compares everything once the body is complete.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import re
import zlib
from collections.abc import Callable, Mapping
from typing import Any

from awscrt import checksums as crt

from enigma_gateway_s3 import sigv4
from enigma_gateway_s3.errors import S3Error

Pull = Callable[[], bytes]
#: Longest aws-chunked header line accepted (size;chunk-signature=<64 hex>\r\n is ~90).
MAX_LINE = 4096
#: Most trailer lines accepted (S3 sends one checksum and, when signed, its signature).
MAX_TRAILERS = 16
PREFIX = "x-amz-checksum-"
#: A chunk size: 1 to 16 hex digits (up to 2**64 - 1; S3 chunks are at most 5 GiB).
_HEX_SIZE = re.compile(r"[0-9a-fA-F]{1,16}")


class Crc:
    """A CRC with hashlib's update/digest shape. ``function(data, previous)`` is zlib's or
    awscrt's: C code that releases the GIL on large buffers, so uploads hash in parallel."""

    def __init__(self, function: Callable[[Any, int], int], size: int) -> None:
        self._function = function
        self._size = size
        self.value = 0

    def update(self, data: Any) -> None:
        self.value = self._function(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(self._size, "big")


class XxHash:
    """awscrt's streaming XXHash with hashlib's update/digest shape (digest once)."""

    def __init__(self, new: Callable[[], Any]) -> None:
        self._hash = new()

    def update(self, data: Any) -> None:
        self._hash.update(data)

    def digest(self) -> bytes:
        return self._hash.finalize()


#: x-amz-checksum-<name> -> (hasher factory, digest size): every algorithm of S3's
#: ChecksumAlgorithm. CRC32C, CRC64NVME and XXHash come from awscrt (what botocore uses).
CHECKSUMS: dict[str, tuple[Callable[[], Any], int]] = {
    "crc32": (lambda: Crc(zlib.crc32, 4), 4),
    "crc32c": (lambda: Crc(crt.crc32c, 4), 4),
    "crc64nvme": (lambda: Crc(crt.crc64nvme, 8), 8),
    "md5": (hashlib.md5, 16),
    "sha1": (hashlib.sha1, 20),
    "sha256": (hashlib.sha256, 32),
    "sha512": (hashlib.sha512, 64),
    "xxhash64": (lambda: XxHash(crt.XXHash.new_xxhash64), 8),
    "xxhash3": (lambda: XxHash(crt.XXHash.new_xxhash3_64), 8),
    "xxhash128": (lambda: XxHash(crt.XXHash.new_xxhash3_128), 16),
}
#: x-amz-checksum-* headers that carry no checksum value.
NOT_CHECKSUMS = frozenset({"algorithm", "mode", "type"})


def _algorithm(header: str, origin: str) -> str:
    """The algorithm an x-amz-checksum-<name> header names; anything else is refused, as
    S3 does, rather than stored unverified."""
    name = header[len(PREFIX):] if header.startswith(PREFIX) else ""
    if name not in CHECKSUMS:
        raise S3Error("InvalidRequest", f"{origin} {header!r} is not a supported checksum "
                                        f"(x-amz-checksum-{{{','.join(CHECKSUMS)}}})")
    return name


def announced_checksums(headers: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """(algorithm -> header value, algorithms announced in ``x-amz-trailer``); like S3,
    at most one checksum per request."""
    sent = {_algorithm(name, "header"): value for name, value in headers.items()
            if name.startswith(PREFIX) and name[len(PREFIX):] not in NOT_CHECKSUMS}
    trailed = [_algorithm(name.strip().lower(), "x-amz-trailer")
               for name in headers.get("x-amz-trailer", "").split(",") if name.strip()]
    if len(sent) + len(trailed) > 1:
        raise S3Error("InvalidRequest", "Expecting a single x-amz-checksum- header. "
                                        "Multiple checksum Types are not allowed.")
    return sent, trailed


def decode_checksum(name: str, value: str) -> bytes:
    """A checksum's base64 value; malformed is ``InvalidRequest`` (not ``BadDigest``)."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != CHECKSUMS[name][1]:
        raise S3Error("InvalidRequest", f"Value for {PREFIX}{name} header is invalid.")
    return raw


class AwsChunked:
    """Decodes ``aws-chunked`` framing: ``<hex size>[;chunk-signature=<sig>]\\r\\n<data>\\r\\n``
    ... a final zero-size chunk, then optional trailer lines and an empty line."""

    def __init__(self, pull: Pull, auth: sigv4.Auth | None, *,
                 signed_trailer: bool = False) -> None:
        self._pull = pull
        self._buf = bytearray()
        self._eof = False
        self._auth = auth  # verify chunk signatures when set
        self._signed_trailer = signed_trailer  # verify x-amz-trailer-signature (needs auth)
        self._previous = auth.seed_signature if auth else ""
        self._left = 0  # data bytes left in the current chunk
        self._hash: Any = None
        self._expected = ""
        self.done = False
        self.trailers: dict[str, str] = {}

    def _fill(self) -> bool:
        if self._eof:
            return False
        data = self._pull()
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    def _line(self) -> str:
        while True:
            at = self._buf.find(b"\r\n")
            if at >= 0:
                line = bytes(self._buf[:at])
                del self._buf[: at + 2]
                return line.decode("latin-1")
            if len(self._buf) > MAX_LINE or not self._fill():
                raise S3Error("IncompleteBody", "malformed or truncated aws-chunked body")

    def _start_chunk(self) -> None:
        size_text, _, extension = self._line().partition(";")
        # Hex digits only: int(..., 16) would also take "-10", "0x10" and "1_0", and a
        # negative size would end the body early instead of refusing it.
        if not _HEX_SIZE.fullmatch(size_text.strip()):
            raise S3Error("IncompleteBody", "malformed aws-chunked chunk header")
        size = int(size_text.strip(), 16)
        if self._auth is not None:
            name, _, value = extension.partition("=")
            if name.strip() != "chunk-signature":
                raise S3Error("SignatureDoesNotMatch", "a chunk has no chunk-signature")
            self._expected = value.strip()
            self._hash = hashlib.sha256()
        self._left = size
        if size == 0:
            self._end_chunk()
            self._read_trailers()
            self.done = True

    def _end_chunk(self) -> None:
        if self._auth is not None:
            actual = self._auth.chunk_signature(self._previous, self._hash.hexdigest())
            if not sigv4.same(actual, self._expected):
                raise S3Error("SignatureDoesNotMatch", "a chunk signature does not match")
            self._previous = self._expected

    def _read_trailers(self) -> None:
        signature: str | None = None
        seen: set[str] = set()
        while self._buf or self._fill():
            line = self._line()
            if not line:
                break
            name, colon, value = line.partition(":")
            name = name.strip().lower()
            if not colon or not name or name in seen or len(seen) >= MAX_TRAILERS:
                raise S3Error("MalformedTrailerError")
            seen.add(name)
            if name == "x-amz-trailer-signature":
                signature = value.strip()  # ignored when the trailer is not signed
            else:
                self.trailers[name] = value.strip()
        if self._signed_trailer:
            self._check_trailer_signature(signature)

    def _check_trailer_signature(self, signature: str | None) -> None:
        """The trailer is signed after the final chunk: a checksum swapped in transit (or
        appended by someone without the key) is refused, not just compared."""
        assert self._auth is not None
        if signature is None:
            raise S3Error("SignatureDoesNotMatch", "the trailer has no x-amz-trailer-signature")
        actual = self._auth.trailer_signature(self._previous, self.trailers)
        if not sigv4.same(actual, signature):
            raise S3Error("SignatureDoesNotMatch", "the trailer signature does not match")

    def read_piece(self) -> bytes:
        """The next piece of decoded payload; b"" once the final chunk is read."""
        while not self.done:
            if self._left == 0:
                self._start_chunk()
                continue
            if not self._buf and not self._fill():
                raise S3Error("IncompleteBody", "the aws-chunked body ended early")
            piece = bytes(self._buf[: self._left])
            del self._buf[: len(piece)]
            self._left -= len(piece)
            if self._hash is not None:
                self._hash.update(piece)
            if self._left == 0:
                while len(self._buf) < 2 and self._fill():
                    pass
                if self._buf[:2] != b"\r\n":
                    raise S3Error("IncompleteBody", "malformed aws-chunked chunk end")
                del self._buf[:2]
                self._end_chunk()
            return piece
        return b""


class Payload(io.RawIOBase):
    """The object's bytes, hashed as they are read; ``finish`` checks every digest."""

    def __init__(self, read_piece: Pull, headers: Mapping[str, str], auth: sigv4.Auth,
                 chunked: AwsChunked | None = None, length: int | None = None) -> None:
        self._read_piece = read_piece
        self._pending = b""
        self._chunked = chunked
        self.size = 0
        self.length = length  # the decoded length the client announced, if any
        self.md5 = hashlib.md5()
        self.sha256 = hashlib.sha256() if sigv4.HEX64.fullmatch(auth.payload_hash) else None
        self._expected_sha256 = auth.payload_hash
        self._content_md5 = headers.get("content-md5")
        sent, self._trailed = announced_checksums(headers)
        # Header values are checked before any body byte is read.
        self._expected = {name: decode_checksum(name, value) for name, value in sent.items()}
        self.checksums: dict[str, Any] = {name: CHECKSUMS[name][0]()
                                          for name in [*sent, *self._trailed]}

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if not self._pending:
            self._pending = self._read_piece()
            if not self._pending:
                return 0
            self._account(self._pending)
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _account(self, data: bytes) -> None:
        self.size += len(data)
        if self.length is not None and self.size > self.length:
            raise S3Error("IncompleteBody", "the body is longer than announced")
        self.md5.update(data)
        if self.sha256 is not None:
            self.sha256.update(data)
        for hasher in self.checksums.values():
            hasher.update(data)

    def finish(self) -> None:
        """Called after the last byte: raise the S3 error for any mismatch."""
        if self.length is not None and self.size != self.length:
            raise S3Error("IncompleteBody")
        if self.sha256 is not None and not hmac.compare_digest(
                self.sha256.hexdigest(), self._expected_sha256):
            raise S3Error("XAmzContentSHA256Mismatch",
                          ClientComputedContentSHA256=self._expected_sha256,
                          S3ComputedContentSHA256=self.sha256.hexdigest())
        if self._content_md5 is not None:
            try:
                expected = base64.b64decode(self._content_md5, validate=True)
            except (binascii.Error, ValueError):
                raise S3Error("InvalidDigest") from None
            if len(expected) != 16:
                raise S3Error("InvalidDigest")
            if not hmac.compare_digest(expected, self.md5.digest()):
                raise S3Error("BadDigest")
        self._check_checksums()

    def _check_checksums(self) -> None:
        trailers = self._chunked.trailers if self._chunked else {}
        if set(trailers) != {PREFIX + name for name in self._trailed}:
            raise S3Error("MalformedTrailerError", "the trailer does not match x-amz-trailer")
        for name, hasher in self.checksums.items():
            expected = self._expected.get(name)
            if expected is None:
                expected = decode_checksum(name, trailers[PREFIX + name])
            if not hmac.compare_digest(expected, hasher.digest()):
                raise S3Error("BadDigest", f"The {name.upper()} you specified did not match "
                                           "the calculated checksum.")

    @property
    def etag(self) -> str:
        return self.md5.hexdigest()


def open_body(pull: Pull, headers: Mapping[str, str], auth: sigv4.Auth) -> Payload:
    """The request's payload, unwrapped from ``aws-chunked`` when the client framed it."""
    mode = auth.payload_hash
    streaming = mode.startswith("STREAMING-")
    encodings = [e.strip() for e in headers.get("content-encoding", "").split(",")]
    if not (streaming or "aws-chunked" in encodings):
        _no_trailer(headers, "an aws-chunked body")
        declared = headers.get("content-length")
        return Payload(pull, headers, auth, None, _int(declared) if declared else None)
    if streaming and mode not in sigv4.STREAMING_MODES:
        raise S3Error("NotImplemented", f"payload mode {mode} is not supported")
    if mode == sigv4.STREAMING_SIGNED:
        # Its trailer could not be signed: a signed upload must not end in unsigned data.
        _no_trailer(headers, sigv4.STREAMING_SIGNED_TRAILER + " (signed trailer)")
    signed = mode in (sigv4.STREAMING_SIGNED, sigv4.STREAMING_SIGNED_TRAILER)
    chunked = AwsChunked(pull, auth if signed else None,
                         signed_trailer=mode == sigv4.STREAMING_SIGNED_TRAILER)
    declared = headers.get("x-amz-decoded-content-length")
    length = _int(declared) if declared is not None else None
    return Payload(chunked.read_piece, headers, auth, chunked, length)


def _no_trailer(headers: Mapping[str, str], needed: str) -> None:
    if headers.get("x-amz-trailer", "").strip():
        raise S3Error("InvalidRequest", f"x-amz-trailer needs {needed}")


def _int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise S3Error("InvalidArgument", f"not a length: {value!r}") from None
    if number < 0:
        raise S3Error("InvalidArgument", f"not a length: {value!r}")
    return number
