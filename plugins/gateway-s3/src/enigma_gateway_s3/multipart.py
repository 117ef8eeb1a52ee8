"""Multipart uploads, kept in the manifest through its existing named operations.

An upload and its parts are ordinary objects of an internal bucket, ``.multipart`` (a
name no S3 client can create or reach: S3 bucket names never start with a dot, and its
owner is nobody's access key): the upload is the object ``<upload id>`` (no chunks; the
target bucket, key, content type and metadata in its metadata), each part the object
``<upload id>/<part number>`` whose chunks went through the pipeline like any PUT.
Parts are therefore durable, referenced (gc keeps their chunks) and replicated by
whatever replicates the manifest. Completing writes the final object with the parts'
chunk lists joined (no byte is copied), then deletes the parts and the upload.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from enigma.errors import IntegrityError, NotFoundError
from enigma.manifest import BucketRecord, ChunkRef, Manifest, ObjectRecord
from enigma_gateway_s3.errors import S3Error

if TYPE_CHECKING:
    from enigma_gateway_s3.app import Handler, Response

UPLOADS = ".multipart"
MAX_PART = 10_000
MIN_PART_SIZE = 5 * 1024 * 1024
XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"


def ensure_bucket(manifest: Manifest) -> None:
    """Create the internal bucket once (a concurrent creator winning is fine)."""
    if manifest.get_bucket(UPLOADS) is None:
        with contextlib.suppress(IntegrityError):
            manifest.create_bucket(BucketRecord(UPLOADS, "", time.time(), ""))


def _part_key(upload_id: str, number: int) -> str:
    return f"{upload_id}/{number:05d}"


class Multipart:
    """The multipart operations of one request (``h`` is the request's ``Handler``)."""

    def __init__(self, h: Handler, xml: Callable[[str], Response]) -> None:
        self.h = h
        self.manifest: Manifest = h.app.manifest
        self.xml = xml

    def _upload(self, bucket: str, key: str) -> tuple[str, ObjectRecord]:
        upload_id = self.h.params.get("uploadId", "")
        record = self.manifest.get_object(UPLOADS, upload_id) if upload_id.isalnum() else None
        meta = record.metadata if record else {}
        if (record is None or meta.get("bucket") != bucket or meta.get("key") != key
                or meta.get("owner") != self.h.owner):
            raise S3Error("NoSuchUpload", "The specified upload does not exist. The upload ID "
                          "may be invalid, or the upload may have been aborted or completed.",
                          UploadId=upload_id)
        return upload_id, record

    def create(self, bucket: str, key: str) -> Response:
        self.h.require_bucket(bucket)
        upload_id = secrets.token_hex(16)
        metadata = {"bucket": bucket, "key": key, "owner": self.h.owner,
                    "content-type": self.h.headers.get("content-type", ""),
                    "headers": self.h.request_metadata()}
        self.manifest.put_object(ObjectRecord(UPLOADS, upload_id, 0, "", time.time(), "",
                                              metadata))
        return self.xml(f'<InitiateMultipartUploadResult xmlns="{XMLNS}"><Bucket>'
                        f"{escape(bucket)}</Bucket><Key>{escape(key)}</Key><UploadId>"
                        f"{upload_id}</UploadId></InitiateMultipartUploadResult>")

    def upload_part(self, bucket: str, key: str) -> Response:
        from enigma_gateway_s3.app import Response
        from enigma_gateway_s3.body import open_body

        self.h.require_bucket(bucket)
        if "x-amz-copy-source" in self.h.headers:
            raise S3Error("NotImplemented", "UploadPartCopy is not implemented yet")
        try:
            number = int(self.h.params.get("partNumber", ""))
        except ValueError:
            number = 0
        if not 1 <= number <= MAX_PART:
            raise S3Error("InvalidArgument", "Part number must be an integer between 1 and "
                                             "10000, inclusive")
        upload_id, _ = self._upload(bucket, key)
        body = open_body(self.h.pull, self.h.headers, self.h.auth)
        try:
            part = self.h.app.store.put(UPLOADS, _part_key(upload_id, number), body, "", {})
        except NotFoundError:
            raise S3Error("InternalError", "the multipart bucket is missing") from None
        # Aborted or completed while this part was streaming: drop the orphan part.
        if self.manifest.get_object(UPLOADS, upload_id) is None:
            self.manifest.delete_object(UPLOADS, part.key)
            raise S3Error("NoSuchUpload", UploadId=upload_id)
        return Response(200, [("ETag", f'"{part.etag}"'), ("Content-Length", "0")])

    def _parts(self, upload_id: str) -> list[ObjectRecord]:
        return self.manifest.list_objects(UPLOADS, prefix=f"{upload_id}/", limit=MAX_PART + 1)

    def complete(self, bucket: str, key: str) -> Response:
        self.h.require_bucket(bucket)
        upload_id, upload = self._upload(bucket, key)
        try:
            root = ElementTree.fromstring(self.h.read_small_body(4 << 20))
        except ElementTree.ParseError:
            raise S3Error("MalformedXML") from None
        wanted: list[tuple[int, str]] = []
        for element in root:
            if element.tag.rsplit("}", 1)[-1] != "Part":
                continue
            fields = {c.tag.rsplit("}", 1)[-1]: (c.text or "").strip() for c in element}
            try:
                wanted.append((int(fields["PartNumber"]), fields["ETag"].strip('"')))
            except (KeyError, ValueError):
                raise S3Error("MalformedXML") from None
        if not wanted:
            raise S3Error("MalformedXML", "The XML you provided did not list any part")
        numbers = [n for n, _ in wanted]
        if numbers != sorted(set(numbers)):
            raise S3Error("InvalidPartOrder", "The list of parts was not in ascending order. "
                          "Parts must be ordered by part number.", UploadId=upload_id)
        have = {int(p.key.rsplit("/", 1)[1]): p for p in self._parts(upload_id)}
        chunks: list[ChunkRef] = []
        digests = b""
        size = 0
        for index, (number, etag) in enumerate(wanted):
            part = have.get(number)
            if part is None or part.etag != etag:
                raise S3Error("InvalidPart", "One or more of the specified parts could not be "
                              "found. The part may not have been uploaded, or the specified "
                              "entity tag may not match the part's entity tag.",
                              UploadId=upload_id, PartNumber=str(number), ETag=etag)
            if part.size < MIN_PART_SIZE and index < len(wanted) - 1:
                raise S3Error("EntityTooSmall", "Your proposed upload is smaller than the "
                              "minimum allowed object size.", ProposedSize=str(part.size),
                              MinSizeAllowed=str(MIN_PART_SIZE), PartNumber=str(number))
            full = self.manifest.get_object(UPLOADS, part.key)
            if full is None:
                raise S3Error("InvalidPart", UploadId=upload_id, PartNumber=str(number))
            chunks += [ChunkRef(r.chunk_id, r.offset + size, r.length) for r in full.chunks]
            digests += bytes.fromhex(part.etag)
            size += part.size
        etag = f"{hashlib.md5(digests).hexdigest()}-{len(wanted)}"
        meta = upload.metadata
        record = ObjectRecord(bucket, key, size, etag, time.time(), meta.get("content-type", ""),
                              dict(meta.get("headers", {})), chunks)
        try:
            self.manifest.put_object(record)
        except NotFoundError:
            raise S3Error("NoSuchBucket", BucketName=bucket) from None
        self._drop(upload_id)
        return self.xml(f'<CompleteMultipartUploadResult xmlns="{XMLNS}"><Location>/'
                        f"{escape(bucket)}/{escape(key)}</Location><Bucket>{escape(bucket)}"
                        f"</Bucket><Key>{escape(key)}</Key><ETag>&quot;{etag}&quot;</ETag>"
                        "</CompleteMultipartUploadResult>")

    def _drop(self, upload_id: str) -> None:
        # The upload first, so a part still streaming in sees it gone and removes itself.
        self.manifest.delete_object(UPLOADS, upload_id)
        for part in self._parts(upload_id):
            self.manifest.delete_object(UPLOADS, part.key)

    def abort(self, bucket: str, key: str) -> Response:
        from enigma_gateway_s3.app import Response

        self.h.require_bucket(bucket)
        upload_id, _ = self._upload(bucket, key)
        self._drop(upload_id)
        return Response(204)

    def list_parts(self, bucket: str, key: str) -> Response:
        from enigma_gateway_s3.app import iso_time

        self.h.require_bucket(bucket)
        upload_id, _ = self._upload(bucket, key)
        try:
            marker = int(self.h.params.get("part-number-marker", "0"))
            limit = min(int(self.h.params.get("max-parts", "1000")), 1000)
        except ValueError:
            raise S3Error("InvalidArgument", "max-parts and part-number-marker must be "
                                             "integers") from None
        parts = [p for p in self._parts(upload_id) if int(p.key.rsplit("/", 1)[1]) > marker]
        page, truncated = parts[:limit], len(parts) > limit
        rows = "".join(
            f"<Part><PartNumber>{int(p.key.rsplit('/', 1)[1])}</PartNumber><LastModified>"
            f"{iso_time(p.created_at)}</LastModified><ETag>&quot;{p.etag}&quot;</ETag>"
            f"<Size>{p.size}</Size></Part>" for p in page)
        last = int(page[-1].key.rsplit("/", 1)[1]) if page else marker
        return self.xml(
            f'<ListPartsResult xmlns="{XMLNS}"><Bucket>{escape(bucket)}</Bucket><Key>'
            f"{escape(key)}</Key><UploadId>{upload_id}</UploadId><PartNumberMarker>{marker}"
            f"</PartNumberMarker><NextPartNumberMarker>{last}</NextPartNumberMarker>"
            f"<MaxParts>{limit}</MaxParts><IsTruncated>{str(truncated).lower()}"
            f"</IsTruncated>{rows}</ListPartsResult>")

    def list_uploads(self, bucket: str) -> Response:
        from enigma_gateway_s3.app import iso_time

        self.h.require_bucket(bucket)
        prefix = self.h.params.get("prefix", "")
        uploads = []
        after = ""
        while True:  # uploads are the keys without a "/" (parts have one)
            page = self.manifest.list_objects(UPLOADS, start_after=after, limit=1000)
            if not page:
                break
            for record in page:
                meta = record.metadata
                if ("/" not in record.key and meta.get("bucket") == bucket
                        and meta.get("owner") == self.h.owner
                        and str(meta.get("key", "")).startswith(prefix)):
                    uploads.append((meta["key"], record))
            after = page[-1].key
        uploads.sort(key=lambda u: (u[0], u[1].created_at))
        rows = "".join(
            f"<Upload><Key>{escape(k)}</Key><UploadId>{r.key}</UploadId><Initiated>"
            f"{iso_time(r.created_at)}</Initiated><StorageClass>STANDARD</StorageClass>"
            "</Upload>" for k, r in uploads[:1000])
        return self.xml(
            f'<ListMultipartUploadsResult xmlns="{XMLNS}"><Bucket>{escape(bucket)}</Bucket>'
            f"<Prefix>{escape(prefix)}</Prefix><MaxUploads>1000</MaxUploads><IsTruncated>"
            f"{str(len(uploads) > 1000).lower()}</IsTruncated>{rows}"
            "</ListMultipartUploadsResult>")


def expire_uploads(manifest: Manifest, older_than: float) -> int:
    """Discard unfinished uploads started before ``older_than`` (a Unix time), parts too."""
    expired = []
    after = ""
    while True:
        page = manifest.list_objects(UPLOADS, start_after=after, limit=1000)
        if not page:
            break
        expired += [r.key for r in page if "/" not in r.key and r.created_at < older_than]
        after = page[-1].key
    for upload_id in expired:
        manifest.delete_object(UPLOADS, upload_id)
        for part in manifest.list_objects(UPLOADS, prefix=f"{upload_id}/", limit=MAX_PART + 1):
            manifest.delete_object(UPLOADS, part.key)
    return len(expired)


class Sweeper:
    """A daemon thread expiring abandoned uploads now and then, until ``stop``."""

    def __init__(self, manifest: Manifest, expiry: float) -> None:
        self.manifest = manifest
        self.expiry = expiry
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="enigma-mpu-expiry",
                                        daemon=True)

    def start(self) -> None:
        if self.expiry > 0:
            self._thread.start()

    def _run(self) -> None:
        interval = min(3600.0, max(self.expiry / 4, 0.5))
        while not self._stop.is_set():
            try:
                expire_uploads(self.manifest, time.time() - self.expiry)
            except Exception as exc:  # never let the sweeper die; try again next time
                logging.getLogger("enigma_gateway_s3").error(
                    "expiring multipart uploads failed: %s", exc)
            self._stop.wait(interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
