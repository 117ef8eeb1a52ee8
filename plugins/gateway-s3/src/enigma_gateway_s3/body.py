"""Request bodies as file objects on a worker thread, verified while they stream.

``pull`` hands over the next piece of the HTTP body (b"" at the end); it runs the ASGI
``receive`` on the event loop, so nothing here ever holds more than one piece plus the
reader's buffer. ``AwsChunked`` strips the ``aws-chunked`` framing (checking each chunk
signature for ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``); ``Payload`` hashes what passes
through (MD5 for the ETag, SHA-256 for a signed payload, an ``x-amz-checksum-*``) and
``finish`` compares everything once the body is complete.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import zlib
from collections.abc import Callable, Mapping
from typing import Any

from enigma_gateway_s3 import sigv4
from enigma_gateway_s3.errors import S3Error

Pull = Callable[[], bytes]
#: Longest aws-chunked header line accepted (size;chunk-signature=<64 hex>\r\n is ~90).
MAX_LINE = 4096


class Crc32:
    """zlib.crc32 with hashlib's update/digest shape."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: Any) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


#: x-amz-checksum-<name> -> hasher factory (others are accepted but not verified yet).
CHECKSUMS: dict[str, Callable[[], Any]] = {
    "crc32": Crc32,
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
}


class AwsChunked:
    """Decodes ``aws-chunked`` framing: ``<hex size>[;chunk-signature=<sig>]\\r\\n<data>\\r\\n``
    ... a final zero-size chunk, then optional trailer lines and an empty line."""

    def __init__(self, pull: Pull, auth: sigv4.Auth | None) -> None:
        self._pull = pull
        self._buf = bytearray()
        self._eof = False
        self._auth = auth  # verify chunk signatures when set
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
        try:
            size = int(size_text.strip(), 16)
        except ValueError:
            raise S3Error("IncompleteBody", "malformed aws-chunked chunk header") from None
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
            if not hmac.compare_digest(actual, self._expected):
                raise S3Error("SignatureDoesNotMatch", "a chunk signature does not match")
            self._previous = self._expected

    def _read_trailers(self) -> None:
        while self._buf or self._fill():
            line = self._line()
            if not line:
                break
            name, _, value = line.partition(":")
            self.trailers[name.strip().lower()] = value.strip()

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
        self._headers = headers
        self.checksums: dict[str, Any] = {}
        wanted = {n[len("x-amz-checksum-"):] for n in headers if n.startswith("x-amz-checksum-")}
        wanted |= {n.strip().lower()[len("x-amz-checksum-"):]
                   for n in headers.get("x-amz-trailer", "").split(",") if n.strip()}
        for name in wanted:
            if name in CHECKSUMS:
                self.checksums[name] = CHECKSUMS[name]()

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
        trailers = self._chunked.trailers if self._chunked else {}
        for name, hasher in self.checksums.items():
            header = f"x-amz-checksum-{name}"
            value = self._headers.get(header) or trailers.get(header)
            if value is None:
                raise S3Error("InvalidRequest", f"{header} was announced but not sent")
            actual = base64.b64encode(hasher.digest()).decode()
            if not hmac.compare_digest(actual, value):
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
    if streaming or "aws-chunked" in encodings:
        if mode.startswith("STREAMING-") and mode not in (sigv4.STREAMING_SIGNED,
                                                           sigv4.STREAMING_UNSIGNED_TRAILER):
            raise S3Error("NotImplemented", f"payload mode {mode} is not supported yet")
        chunked = AwsChunked(pull, auth if mode == sigv4.STREAMING_SIGNED else None)
        declared = headers.get("x-amz-decoded-content-length")
        length = _int(declared) if declared is not None else None
        return Payload(chunked.read_piece, headers, auth, chunked, length)
    declared = headers.get("content-length")
    return Payload(pull, headers, auth, None, _int(declared) if declared else None)


def _int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise S3Error("InvalidArgument", f"not a length: {value!r}") from None
    if number < 0:
        raise S3Error("InvalidArgument", f"not a length: {value!r}")
    return number
