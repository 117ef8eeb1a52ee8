"""The S3 REST API as a raw ASGI application (path-style addressing).

The event loop only moves bytes: each request is handled by ``Handler`` on a worker thread
(``anyio.to_thread``), which pulls the request body from the loop piece by piece and
returns a response whose body may be an iterator, itself advanced on a worker thread. So
hashing, sealing, SQLite and storage I/O never block the loop, and memory stays flat.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import logging
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, unquote_to_bytes
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import anyio
import anyio.from_thread
import anyio.to_thread

from enigma.errors import EnigmaError, IntegrityError, NotFoundError, UnavailableError
from enigma.lock import RepositoryBusy, repository_lock
from enigma.manifest import BucketRecord, ObjectRecord
from enigma_gateway_s3 import body as body_checksums
from enigma_gateway_s3 import sigv4
from enigma_gateway_s3.body import open_body
from enigma_gateway_s3.config import GatewayOptions
from enigma_gateway_s3.errors import S3Error
from enigma_gateway_s3.multipart import Multipart, ensure_bucket, layout_of, part_span
from enigma_gateway_s3.store import ObjectStore

log = logging.getLogger("enigma_gateway_s3")

XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
MAX_KEYS = 1000
#: Requests handled at once (each holds a worker thread while it runs).
WORKER_THREADS = 128
MAX_KEY_BYTES = 1024
#: Largest piece of a GET body handed to the HTTP server at once.
SEND_SLICE = 512 * 1024
#: Sorts after any character a key can hold: "<prefix>" + this skips a common prefix.
AFTER_ALL = "\U0010ffff" * 4
#: Headers stored with an object and answered back on GET/HEAD.
STORED_HEADERS = ("cache-control", "content-disposition", "content-encoding",
                  "content-language", "expires")
#: Sub-resources S3 has that this gateway does not implement yet (NotImplemented).
SUBRESOURCES = frozenset((
    "accelerate", "acl", "analytics", "attributes", "cors", "delete", "encryption",
    "intelligent-tiering", "inventory", "legal-hold", "lifecycle", "logging", "metrics",
    "notification", "object-lock", "ownershipControls", "partNumber", "policy",
    "policyStatus", "publicAccessBlock", "replication", "requestPayment", "restore",
    "retention", "select", "tagging", "torrent", "uploadId", "uploads", "versioning",
    "versions", "website"))
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4 = re.compile(r"\d+\.\d+\.\d+\.\d+")
_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")
#: Digits beyond this are a number larger than any object (and int() refuses more than
#: 4300 digits with a ValueError, which must not become an error 500).
_MAX_DIGITS = 19
#: What a response header value may hold (RFC 9110 field-value: visible Latin-1, SP, HTAB).
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


@dataclass
class Response:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | Iterator[bytes] = b""


def xml_response(body: str, status: int = 200) -> Response:
    data = ('<?xml version="1.0" encoding="UTF-8"?>\n' + body).encode()
    return Response(status, [("Content-Type", "application/xml"),
                             ("Content-Length", str(len(data)))], data)


def iso_time(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp)) + \
        f".{int(stamp * 1000) % 1000:03d}Z"


def http_time(stamp: float) -> str:
    return email.utils.formatdate(stamp, usegmt=True)


def valid_bucket_name(name: str) -> bool:
    return bool(_BUCKET_NAME.fullmatch(name)) and ".." not in name and \
        not _IPV4.fullmatch(name) and not name.startswith(("xn--", "sthree-")) and \
        not name.endswith(("-s3alias", "--ol-s3")) and ".-" not in name and "-." not in name


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) of a ``Range: bytes=...`` header; None means the whole object.

    A malformed or multi-range header is ignored, as S3 does; an unsatisfiable one raises.
    """
    if not value:
        return None
    match = _RANGE.fullmatch(value.strip())
    if not match or (not match[1] and not match[2]):
        return None
    first_text, last_text = match[1], match[2]
    if not first_text:  # suffix: the last n bytes
        n = _offset(last_text)
        if n == 0 or size == 0:
            raise S3Error("InvalidRange", ActualObjectSize=str(size), RangeRequested=value)
        return max(size - n, 0), size - 1
    first = _offset(first_text)
    last = _offset(last_text) if last_text else size - 1
    if last_text and last < first:
        return None
    if first >= size:
        raise S3Error("InvalidRange", ActualObjectSize=str(size), RangeRequested=value)
    return first, min(last, size - 1)


def _offset(digits: str) -> int:
    """A Range offset; a huge one (any number of digits) is past every object's end."""
    return int(digits) if len(digits) <= _MAX_DIGITS else 1 << 64


def key_error(key: str) -> S3Error | None:
    """Why an object key is refused, if it is: too long, or holding a NUL (which no XML
    listing can carry, and which C tools syncing to a file system cut the name at)."""
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return S3Error("KeyTooLongError")
    if "\0" in key:
        return S3Error("InvalidArgument", "Object keys may not contain a NUL character")
    return None


def strict_path(raw: bytes | None) -> bool:
    """Whether the percent-encoded path decodes to valid UTF-8. The server's own decoding
    replaces invalid bytes with U+FFFD, so "/b/%FF" and "/b/%FE" would name one key."""
    if not raw:
        return True
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class Handler:
    """One request, on a worker thread."""

    def __init__(self, app: S3App, scope: dict[str, Any], receive: Any) -> None:
        self.app = app
        self.scope = scope
        self._receive = receive
        self._ended = False
        self.method = scope["method"]
        raw = scope.get("raw_path")
        self.raw_path = raw.decode("latin-1") if raw else quote(scope["path"])
        self.path = scope["path"]
        self.query = sigv4.parse_query(scope.get("query_string", b"").decode("latin-1"))
        self.params = dict(self.query)
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            key, text = name.decode("latin-1").lower(), value.decode("latin-1")
            headers[key] = f"{headers[key]},{text}" if key in headers else text
        self.headers = headers
        self.synced = False  # see sync()

    # -- plumbing ----------------------------------------------------------------------

    def pull(self) -> bytes:
        """The next piece of the request body (b"" at its end), fetched on the loop."""
        while not self._ended:
            message = anyio.from_thread.run(self._receive)
            if message["type"] == "http.disconnect":
                self._ended = True
                raise S3Error("IncompleteBody", "the client went away")
            self._ended = not message.get("more_body", False)
            if message.get("body"):
                return message["body"]
        return b""

    def body_left(self) -> bool:
        """Whether the request has body bytes this handler has not read."""
        if self._ended:
            return False
        length = self.headers.get("content-length")
        return length != "0" if length is not None else "transfer-encoding" in self.headers

    def run(self) -> Response:
        auth = sigv4.verify(sigv4.Request(self.method, self.raw_path, self.query,
                                          self.headers), self.app.options.credentials)
        if not strict_path(self.scope.get("raw_path")):
            raise S3Error("InvalidURI", "Couldn't parse the specified URI: the path is not "
                                        "valid percent-encoded UTF-8")
        self.owner = auth.access_key
        self.auth = auth
        if not self.blind_write():
            self.sync()
        if self.method not in ("PUT", "POST") or self.app.manifest.replicated:
            return self.dispatch()
        # Writes hold the repository lock shared, as backups do: `enigma gc` (exclusive)
        # must not run while chunks are stored but not yet recorded or referenced, or it
        # would delete them as orphans or as unreferenced. (A cluster refuses gc: the lock
        # is per machine, and a node's config directory may be read-only.)
        try:
            with repository_lock(self.app.config_dir, exclusive=False):
                return self.dispatch()
        except RepositoryBusy:
            raise S3Error("SlowDown", "enigma gc is running; retry shortly") from None

    def sync(self) -> None:
        """Make this request's reads see every write acknowledged by any node.

        With a replicated manifest (Raft) that is a read barrier, one commit round; a
        single manifest sees its own writes already and does nothing.
        """
        if not self.synced:
            self.app.manifest.read_barrier()
            self.synced = True

    def blind_write(self) -> bool:
        """A plain PutObject reads only whether its bucket exists, and the commit checks
        that again in log order: it syncs only when its local answer is "no" (see
        ``require_bucket``), saving a commit round per small PUT in a cluster."""
        return (self.method == "PUT" and "x-amz-copy-source" not in self.headers
                and not SUBRESOURCES.intersection(self.params)
                and "/" in self.path.lstrip("/") and self.virtual_host_bucket() is None)

    def virtual_host_bucket(self) -> str | None:
        """The bucket a ``<bucket>.<domain>`` Host header names, if it is one."""
        host = self.headers.get("host", "").lower()
        if host.startswith("["):
            return None
        host = host.rsplit(":", 1)[0] if ":" in host else host
        for domain in self.app.options.domains:
            if host.endswith("." + domain):
                return host[: -len(domain) - 1]
        return None

    def dispatch(self) -> Response:
        vhost = self.virtual_host_bucket()
        if vhost is not None:
            bucket, key = vhost, self.path[1:] if self.path.startswith("/") else self.path
        else:
            bucket, _, key = self.path.lstrip("/").partition("/")
        if not bucket:
            if self.method == "GET":
                return self.list_buckets()
            raise S3Error("MethodNotAllowed", Method=self.method, ResourceType="SERVICE")
        unsupported = SUBRESOURCES.intersection(self.params)
        if not key:
            return self.bucket_op(bucket, unsupported)
        return self.object_op(bucket, key, unsupported)

    # -- buckets -----------------------------------------------------------------------

    def bucket_op(self, bucket: str, unsupported: set[str]) -> Response:
        method = self.method
        if method == "POST" and unsupported == {"delete"}:
            return self.delete_objects(bucket)
        if method == "GET" and unsupported == {"uploads"}:
            return Multipart(self, xml_response).list_uploads(bucket)
        if method == "GET" and unsupported == {"versioning"}:
            self.require_bucket(bucket)  # buckets are never versioned: an empty status
            return xml_response(f'<VersioningConfiguration xmlns="{XMLNS}"/>')
        if unsupported:
            raise S3Error("NotImplemented", f"?{sorted(unsupported)[0]} is not implemented yet")
        if method == "PUT":
            return self.create_bucket(bucket)
        if method == "DELETE":
            self.require_bucket(bucket)
            try:
                self.app.manifest.delete_bucket(bucket)
            except NotFoundError:
                raise S3Error("NoSuchBucket", BucketName=bucket) from None
            except IntegrityError:
                raise S3Error("BucketNotEmpty", BucketName=bucket) from None
            return Response(204)
        if method == "HEAD":
            record = self.require_bucket(bucket)
            return Response(200, [("x-amz-bucket-region", record.region)])
        if method == "GET":
            record = self.require_bucket(bucket)
            if "location" in self.params:
                region = "" if record.region == "us-east-1" else escape(record.region)
                return xml_response(f'<LocationConstraint xmlns="{XMLNS}">{region}'
                                    "</LocationConstraint>")
            if self.params.get("list-type") == "2":
                return self.list_objects(bucket, v2=True)
            return self.list_objects(bucket, v2=False)
        raise S3Error("MethodNotAllowed", Method=method, ResourceType="BUCKET")

    def require_bucket(self, bucket: str) -> BucketRecord:
        record = self.app.manifest.get_bucket(bucket)
        if (record is None or record.owner != self.owner) and not self.synced:
            self.sync()  # created or re-created through another node a moment ago?
            record = self.app.manifest.get_bucket(bucket)
        if record is None:
            raise S3Error("NoSuchBucket", BucketName=bucket)
        if record.owner != self.owner:
            raise S3Error("AccessDenied")
        return record

    def create_bucket(self, bucket: str) -> Response:
        if not valid_bucket_name(bucket):
            raise S3Error("InvalidBucketName", BucketName=bucket)
        region = self.app.options.region
        body = self.read_small_body()
        if body.strip():
            try:
                root = ElementTree.fromstring(body)
            except ElementTree.ParseError:
                raise S3Error("MalformedXML") from None
            for element in root.iter():
                if element.tag.rsplit("}", 1)[-1] == "LocationConstraint" and element.text:
                    region = element.text.strip()
        existing = self.app.manifest.get_bucket(bucket)
        if existing is not None:
            code = "BucketAlreadyOwnedByYou" if existing.owner == self.owner \
                else "BucketAlreadyExists"
            raise S3Error(code, BucketName=bucket)
        try:
            self.app.manifest.create_bucket(BucketRecord(bucket, self.owner, time.time(),
                                                         region))
        except IntegrityError:
            raise S3Error("BucketAlreadyOwnedByYou", BucketName=bucket) from None
        return Response(200, [("Location", f"/{bucket}"), ("Content-Length", "0")])

    def read_small_body(self, limit: int = 1 << 20, *, object_checksums: bool = False
                        ) -> bytes:
        """A whole small body (XML), verified like any payload.

        ``object_checksums``: the request's ``x-amz-checksum-*`` headers describe an
        object, not this body (CompleteMultipartUpload), so they are not checked here.
        """
        headers = self.headers
        if object_checksums:
            headers = {k: v for k, v in headers.items()
                       if not k.startswith(body_checksums.PREFIX)}
        payload = open_body(self.pull, headers, self.auth)
        data = bytearray()
        while len(data) <= limit:
            piece = payload.read(limit + 1 - len(data))
            if not piece:
                break
            data += piece
        if len(data) > limit:
            raise S3Error("EntityTooLarge")
        payload.finish()
        return bytes(data)

    def list_buckets(self) -> Response:
        p = self.params
        prefix, region = p.get("prefix", ""), p.get("bucket-region", "")
        try:
            limit = int(p.get("max-buckets", 10000))
        except ValueError:
            raise S3Error("InvalidArgument", "max-buckets must be an integer") from None
        if not 1 <= limit <= 10000:
            raise S3Error("InvalidArgument", "max-buckets must be between 1 and 10000")
        after = p.get("continuation-token", "")
        buckets = [b for b in self.app.manifest.list_buckets()
                   if b.owner == self.owner and b.name.startswith(prefix) and b.name > after
                   and (not region or b.region == region)]
        page, more = buckets[:limit], len(buckets) > limit
        rows = "".join(
            f"<Bucket><Name>{escape(b.name)}</Name><CreationDate>{iso_time(b.created_at)}"
            f"</CreationDate><BucketRegion>{escape(b.region)}</BucketRegion></Bucket>"
            for b in page)
        owner = escape(self.owner)
        token = f"<ContinuationToken>{escape(page[-1].name)}</ContinuationToken>" \
            if more else ""
        shown_prefix = f"<Prefix>{escape(prefix)}</Prefix>" if "prefix" in p else ""
        return xml_response(
            f'<ListAllMyBucketsResult xmlns="{XMLNS}"><Owner><ID>{owner}</ID>'
            f"<DisplayName>{owner}</DisplayName></Owner><Buckets>{rows}</Buckets>"
            f"{token}{shown_prefix}</ListAllMyBucketsResult>")

    # -- listing -----------------------------------------------------------------------

    def _entries(self, bucket: str, prefix: str, delimiter: str, after: str
                 ) -> Iterator[tuple[str, ObjectRecord | None]]:
        """Keys and common prefixes after ``after``, in order: (key, record) or (cp, None)."""
        manifest = self.app.manifest
        while True:
            page = manifest.list_objects(bucket, prefix=prefix, start_after=after,
                                         limit=MAX_KEYS)
            if not page:
                return
            jumped = False
            for record in page:
                rest = record.key[len(prefix):]
                at = rest.find(delimiter) if delimiter else -1
                if at >= 0:
                    common = prefix + rest[: at + len(delimiter)]
                    if common > after:
                        yield common, None
                    after = common + AFTER_ALL
                    jumped = True
                    break  # re-query past the whole common prefix
                after = record.key
                yield record.key, record
            if not jumped and len(page) < MAX_KEYS:
                return

    def list_objects(self, bucket: str, *, v2: bool) -> Response:
        p = self.params
        prefix = p.get("prefix", "")
        delimiter = p.get("delimiter", "")
        try:
            max_keys = min(int(p.get("max-keys", MAX_KEYS)), MAX_KEYS)
        except ValueError:
            raise S3Error("InvalidArgument", "max-keys must be an integer") from None
        if max_keys < 0:
            raise S3Error("InvalidArgument", "max-keys must be >= 0")
        encoding = p.get("encoding-type")
        if encoding not in (None, "url"):
            raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request")

        def enc(text: str) -> str:
            return escape(quote(text, safe="/") if encoding == "url" else text)

        token = p.get("continuation-token")
        if v2 and token is not None:
            try:
                after = base64.urlsafe_b64decode(token.encode()).decode()
            except ValueError:
                raise S3Error("InvalidArgument", "The continuation token provided is "
                                                 "incorrect") from None
        else:
            after = p.get("start-after" if v2 else "marker", "")
        contents: list[str] = []
        commons: list[str] = []
        last = ""
        truncated = False
        entries = self._entries(bucket, prefix, delimiter, after)
        if max_keys > 0:
            for name, record in entries:
                if len(contents) + len(commons) == max_keys:
                    truncated = True
                    break
                last = name
                if record is None:
                    commons.append(f"<CommonPrefixes><Prefix>{enc(name)}</Prefix>"
                                   "</CommonPrefixes>")
                else:
                    owner = (f"<Owner><ID>{escape(self.owner)}</ID><DisplayName>"
                             f"{escape(self.owner)}</DisplayName></Owner>"
                             if not v2 or p.get("fetch-owner") == "true" else "")
                    contents.append(
                        f"<Contents><Key>{enc(name)}</Key><LastModified>"
                        f"{iso_time(record.created_at)}</LastModified><ETag>&quot;"
                        f"{record.etag}&quot;</ETag><Size>{record.size}</Size>{owner}"
                        "<StorageClass>STANDARD</StorageClass></Contents>")
        parts = [f'<ListBucketResult xmlns="{XMLNS}"><Name>{escape(bucket)}</Name>',
                 f"<Prefix>{enc(prefix)}</Prefix>"]
        if v2:
            if token is not None:
                parts.append(f"<ContinuationToken>{escape(token)}</ContinuationToken>")
            if "start-after" in p:
                parts.append(f"<StartAfter>{enc(p['start-after'])}</StartAfter>")
            parts.append(f"<KeyCount>{len(contents) + len(commons)}</KeyCount>")
            if truncated:
                next_token = base64.urlsafe_b64encode(last.encode()).decode()
                parts.append(f"<NextContinuationToken>{next_token}</NextContinuationToken>")
        else:
            parts.append(f"<Marker>{enc(p.get('marker', ''))}</Marker>")
            if truncated and delimiter:
                parts.append(f"<NextMarker>{enc(last)}</NextMarker>")
        parts.append(f"<MaxKeys>{max_keys}</MaxKeys>")
        if delimiter:
            parts.append(f"<Delimiter>{enc(delimiter)}</Delimiter>")
        if encoding:
            parts.append("<EncodingType>url</EncodingType>")
        parts.append(f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>")
        parts += contents + commons
        parts.append("</ListBucketResult>")
        return xml_response("".join(parts))

    # -- objects -----------------------------------------------------------------------

    def object_op(self, bucket: str, key: str, unsupported: set[str]) -> Response:
        method = self.method
        refused = key_error(key)
        if refused is not None:
            raise refused
        multipart = Multipart(self, xml_response)
        if method == "POST" and unsupported == {"uploads"}:
            return multipart.create(bucket, key)
        if unsupported == {"uploadId"}:
            if method == "POST":
                return multipart.complete(bucket, key)
            if method == "DELETE":
                return multipart.abort(bucket, key)
            if method == "GET":
                return multipart.list_parts(bucket, key)
        if method == "PUT" and unsupported == {"uploadId", "partNumber"}:
            return multipart.upload_part(bucket, key)
        part_read = method in ("GET", "HEAD") and unsupported == {"partNumber"}
        if unsupported and not part_read:
            raise S3Error("NotImplemented", f"?{sorted(unsupported)[0]} is not implemented yet")
        version = self.params.get("versionId")
        if version not in (None, "null"):
            raise S3Error("InvalidArgument", "Invalid version id specified")
        if method == "PUT" and "x-amz-copy-source" in self.headers:
            return self.copy_object(bucket, key)
        if method == "PUT":
            return self.put_object(bucket, key)
        if method in ("GET", "HEAD"):
            return self.get_object(bucket, key, head=method == "HEAD")
        if method == "DELETE":
            self.require_bucket(bucket)
            self.app.manifest.delete_object(bucket, key)
            return Response(204)
        raise S3Error("MethodNotAllowed", Method=method, ResourceType="OBJECT")

    def request_metadata(self) -> dict[str, str]:
        """``x-amz-meta-*`` and the stored standard headers of this request."""
        metadata = {k: v for k, v in self.headers.items()
                    if k.startswith("x-amz-meta-") or k in STORED_HEADERS}
        encodings = [e.strip() for e in metadata.get("content-encoding", "").split(",")
                     if e.strip() and e.strip() != "aws-chunked"]
        if encodings:
            metadata["content-encoding"] = ", ".join(encodings)
        else:
            metadata.pop("content-encoding", None)
        return metadata

    def put_object(self, bucket: str, key: str) -> Response:
        self.require_bucket(bucket)
        headers = self.headers
        metadata = self.request_metadata()
        body = open_body(self.pull, headers, self.auth)
        content_type = headers.get("content-type", "")
        try:
            record = self.app.store.put(bucket, key, body, content_type, metadata)
        except NotFoundError:
            raise S3Error("NoSuchBucket", BucketName=bucket) from None
        return Response(200, [("ETag", f'"{record.etag}"'), ("Content-Length", "0")])

    def get_object(self, bucket: str, key: str, *, head: bool) -> Response:
        number = self.params.get("partNumber")
        if number is not None and "range" in self.headers:
            raise S3Error("InvalidRequest", "Cannot specify both Range header and partNumber "
                                            "query parameter")
        self.require_bucket(bucket)
        record = self.app.manifest.get_object(bucket, key)
        if record is None:
            raise S3Error("NoSuchKey", Key=key)
        validators = [("ETag", f'"{record.etag}"'),
                      ("Last-Modified", http_time(record.created_at))]
        if not check_conditions(self.headers, record, ""):
            return Response(304, validators)
        size = record.size
        part = part_span(record, number) if number is not None else None
        span = part[:2] if part else parse_range(self.headers.get("range"), size)
        headers = [*validators,
                   ("Accept-Ranges", "bytes"),
                   ("Content-Type", record.content_type or "binary/octet-stream")]
        # Only what was stored as headers is answered (internal keys such as the part
        # layout are not).
        headers += [(k, v) for k, v in sorted(record.metadata.items())
                    if k.startswith("x-amz-meta-") or k in STORED_HEADERS]
        if part:
            headers.append(("x-amz-mp-parts-count", str(part.count)))
        for name in ("content-type", *STORED_HEADERS):
            override = self.params.get(f"response-{name}")
            if override is not None:
                if not _HEADER_VALUE.fullmatch(override):  # non-Latin-1, CR, LF, ...
                    raise S3Error("InvalidArgument", f"response-{name} is not a valid "
                                  "header value", ArgumentName=f"response-{name}")
                headers = [(k, v) for k, v in headers if k.lower() != name]
                headers.append((name, override))
        status = 200
        first, last = 0, size - 1
        if span is not None:
            first, last = span
            status = 206
            if last >= first:  # an empty part has no byte to name
                headers.append(("Content-Range", f"bytes {first}-{last}/{size}"))
        headers.append(("Content-Length", str(last - first + 1)))
        if head or last < first:
            return Response(status, headers)
        return Response(status, headers, started_read(self.app.store, record, first, last))


    def copy_source(self) -> ObjectRecord:
        """The object ``x-amz-copy-source`` names, once the caller may read it and its
        ``x-amz-copy-source-if-*`` conditions hold (CopyObject, UploadPartCopy)."""
        source = unquote(self.headers["x-amz-copy-source"]).split("?", 1)
        if len(source) == 2 and source[1] not in ("", "versionId=null"):
            raise S3Error("InvalidArgument", "Invalid version id specified")
        src_bucket, _, src_key = source[0].lstrip("/").partition("/")
        if not src_bucket or not src_key:
            raise S3Error("InvalidArgument", "Copy Source must mention the source bucket "
                                             "and key: sourcebucket/sourcekey")
        self.require_bucket(src_bucket)
        record = self.app.manifest.get_object(src_bucket, src_key)
        if record is None:
            raise S3Error("NoSuchKey", Key=src_key)
        if not check_conditions(self.headers, record, "x-amz-copy-source-"):
            raise S3Error("PreconditionFailed")
        return record

    def copy_object(self, bucket: str, key: str) -> Response:
        self.require_bucket(bucket)
        record = self.copy_source()
        src_key = record.key
        directive = self.headers.get("x-amz-metadata-directive", "COPY").upper()
        if directive not in ("COPY", "REPLACE"):
            raise S3Error("InvalidArgument", "Unknown metadata directive.")
        if directive == "REPLACE":
            content_type = self.headers.get("content-type", "")
            # The part layout goes with the bytes and the ETag kept below, not with the
            # metadata the client replaces.
            metadata = {**self.request_metadata(), **layout_of(record)}
        else:
            content_type, metadata = record.content_type, record.metadata
            if (record.bucket, src_key) == (bucket, key):
                raise S3Error("InvalidRequest", "This copy request is illegal because it is "
                              "trying to copy an object to itself without changing the "
                              "object's metadata, storage class, website redirect location "
                              "or encryption attributes.")
        # The copy references the same chunks: no byte is read, sealed or stored again.
        copy = ObjectRecord(bucket=bucket, key=key, size=record.size, etag=record.etag,
                            created_at=time.time(), content_type=content_type,
                            metadata=dict(metadata), chunks=record.chunks)
        try:
            self.app.manifest.put_object(copy)
        except NotFoundError:
            raise S3Error("NoSuchBucket", BucketName=bucket) from None
        except IntegrityError:
            raise S3Error("NoSuchKey", "the source object was deleted during the copy",
                          Key=src_key) from None
        return xml_response(f'<CopyObjectResult xmlns="{XMLNS}"><LastModified>'
                            f"{iso_time(copy.created_at)}</LastModified><ETag>&quot;"
                            f"{copy.etag}&quot;</ETag></CopyObjectResult>")

    def delete_objects(self, bucket: str) -> Response:
        self.require_bucket(bucket)
        if "content-md5" not in self.headers and not body_checksums.announced_checksums(
                self.headers)[0]:
            raise S3Error("InvalidRequest", "Missing required header for this request: "
                                            "Content-MD5")
        try:
            root = ElementTree.fromstring(self.read_small_body(2 << 20))
        except ElementTree.ParseError:
            raise S3Error("MalformedXML") from None

        def local(element: ElementTree.Element) -> str:
            return element.tag.rsplit("}", 1)[-1]

        quiet = any(local(e) == "Quiet" and (e.text or "").strip().lower() == "true"
                    for e in root)
        keys = []
        for element in root:
            if local(element) == "Object":
                fields = {local(child): child.text or "" for child in element}
                if "Key" not in fields:
                    raise S3Error("MalformedXML")
                keys.append((fields["Key"], fields.get("VersionId")))
        if not keys or len(keys) > MAX_KEYS:
            raise S3Error("MalformedXML", "DeleteObjects takes 1 to 1000 keys")
        results = []
        for key, version in keys:
            if version not in (None, "null"):
                results.append(f"<Error><Key>{escape(key)}</Key><Code>NoSuchVersion</Code>"
                               "<Message>The specified version does not exist.</Message>"
                               "</Error>")
                continue
            self.app.manifest.delete_object(bucket, key)
            if not quiet:
                results.append(f"<Deleted><Key>{escape(key)}</Key></Deleted>")
        return xml_response(f'<DeleteResult xmlns="{XMLNS}">{"".join(results)}</DeleteResult>')


def started_read(store: ObjectStore, record: ObjectRecord, first: int, last: int
                 ) -> Iterator[bytes]:
    """``store.read`` of bytes first..last with the first piece already fetched: a missing
    or damaged chunk then raises here, before a response starts (a proper error, not a
    truncated 200)."""
    pieces = store.read(record, first, last)
    try:
        lead = next(pieces, b"")
    except BaseException:
        pieces.close()
        raise
    return _primed(lead, pieces)


def _primed(lead: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    try:
        if lead:
            yield lead
        yield from rest
    finally:
        rest.close()  # type: ignore[attr-defined]


def _etags(value: str) -> set[str]:
    return {tag.strip().removeprefix("W/").strip('"') for tag in value.split(",")}


def _http_date(value: str) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed.timestamp() if parsed.tzinfo else None


def check_conditions(headers: dict[str, str], record: ObjectRecord, prefix: str) -> bool:
    """RFC 7232 order, as S3 applies it: a failed If-Match / If-Unmodified-Since raises
    PreconditionFailed; a failed If-None-Match / If-Modified-Since returns False (304)."""
    modified = int(record.created_at)
    if_match = headers.get(f"{prefix}if-match")
    if if_match is not None:
        tags = _etags(if_match)
        if "*" not in tags and record.etag not in tags:
            raise S3Error("PreconditionFailed", Condition="If-Match")
    else:
        since = _http_date(headers.get(f"{prefix}if-unmodified-since", ""))
        if since is not None and modified > since:
            raise S3Error("PreconditionFailed", Condition="If-Unmodified-Since")
    if_none = headers.get(f"{prefix}if-none-match")
    if if_none is not None:
        tags = _etags(if_none)
        return not ("*" in tags or record.etag in tags)
    since = _http_date(headers.get(f"{prefix}if-modified-since", ""))
    return not (since is not None and modified <= since)


class S3App:
    """The ASGI application: authentication, routing, S3 errors."""

    def __init__(self, store: ObjectStore, options: GatewayOptions) -> None:
        self.store = store
        self.manifest = store.manifest
        self.options = options
        self.config_dir = store.repo.config.config_dir
        with contextlib.suppress(UnavailableError):  # a cluster without quorum yet
            ensure_bucket(self.manifest)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    # Each request holds a worker thread while its body streams: allow
                    # more than anyio's default 40 at once.
                    anyio.to_thread.current_default_thread_limiter().total_tokens = \
                        WORKER_THREADS
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        request_id = secrets.token_hex(8).upper()
        head = scope["method"] == "HEAD"
        handler: Handler | None = None
        try:
            handler = Handler(self, scope, receive)
            response = await anyio.to_thread.run_sync(handler.run)
        except S3Error as exc:
            response = self.error(exc, scope, request_id, head)
        except UnavailableError as exc:  # a cluster without quorum: nothing was changed
            log.warning("%s %s: %s", scope["method"], scope["path"], exc)
            response = self.error(S3Error("ServiceUnavailable", str(exc)), scope,
                                  request_id, head)
        except EnigmaError as exc:  # storage or integrity trouble: one line, no traceback
            log.error("%s %s failed: %s", scope["method"], scope["path"], exc)
            response = self.error(S3Error("InternalError", str(exc) or None), scope,
                                  request_id, head)
        except Exception as exc:
            log.exception("request failed: %s %s", scope["method"], scope["path"])
            response = self.error(S3Error("InternalError", str(exc) or None), scope,
                                  request_id, head)
        if handler is None or handler.body_left():
            # Answered without reading the whole body (an error, often before a client
            # waiting on "Expect: 100-continue" sent it): the rest of the body may still be
            # on its way, so this connection cannot carry another request.
            response.headers.append(("Connection", "close"))
        await self.send(send, response, request_id, head)

    @staticmethod
    def error(exc: S3Error, scope: dict[str, Any], request_id: str, head: bool) -> Response:
        body = b"" if head else exc.to_xml(scope["path"], request_id)
        headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
        if exc.code == "InvalidRange":
            headers.append(("Content-Range", f"bytes */{exc.extra.get('ActualObjectSize')}"))
        return Response(exc.status, headers, body)

    @staticmethod
    async def send(send: Any, response: Response, request_id: str, head: bool) -> None:
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        headers += [(b"x-amz-request-id", request_id.encode()), (b"server", b"Enigma")]
        await send({"type": "http.response.start", "status": response.status,
                    "headers": headers})
        body = response.body
        if isinstance(body, bytes):
            await send({"type": "http.response.body", "body": body})
            return
        try:
            while True:
                piece = await anyio.to_thread.run_sync(next, body, None)
                if piece is None:
                    break
                # In slices: the server copies what the socket cannot take at once into
                # the connection's buffer, so a whole 4 MiB chunk would sit there twice.
                with memoryview(piece) as view:
                    for at in range(0, len(view), SEND_SLICE):
                        await send({"type": "http.response.body",
                                    "body": view[at:at + SEND_SLICE], "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await anyio.to_thread.run_sync(body.close)  # type: ignore[union-attr]
