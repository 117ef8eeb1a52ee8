"""Multipart uploads, kept in the manifest through its existing named operations.

An upload and its parts are ordinary objects of an internal bucket, ``.multipart`` (a
name no S3 client can create or reach: S3 bucket names never start with a dot, and its
owner is nobody's access key): the upload is the object ``<upload id>`` (no chunks; the
target bucket, key, content type and metadata in its metadata), each part the object
``<upload id>/<part number>`` whose chunks went through the pipeline like any PUT.
Parts are therefore durable, referenced (gc keeps their chunks) and replicated by
whatever replicates the manifest. Completing writes the final object with the parts'
chunk lists joined (no byte is copied), then deletes the parts and the upload.

The final object keeps its part sizes in its metadata (``PARTS_KEY``), so GET and HEAD
``?partNumber=N`` can answer one part. UploadPartCopy references the source's chunks
and stores only the partial chunks at the edges of a range.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from enigma.errors import IntegrityError, NotFoundError
from enigma.manifest import BucketRecord, ChunkRef, Manifest, ObjectRecord
from enigma.periodic import Periodic
from enigma_gateway_s3.errors import S3Error

if TYPE_CHECKING:
    from enigma_gateway_s3.app import Handler, Response

UPLOADS = ".multipart"
MAX_PART = 10_000
MIN_PART_SIZE = 5 * 1024 * 1024
#: Most uploads or parts one listing page holds (S3's cap).
MAX_LISTED = 1000
XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
#: Metadata key of a completed multipart object holding its part sizes, run-length
#: encoded as ``[[size, count], ...]``. No HTTP header name contains ":", so no client
#: metadata can collide with it, and GET/HEAD answer only header-shaped keys.
PARTS_KEY = "enigma:parts"
# At most 20 digits: more is past any source's end (and int() refuses over 4300 digits).
_COPY_RANGE = re.compile(r"bytes=([0-9]{1,20})-([0-9]{1,20})")


class PartSpan(NamedTuple):
    """Where one part of a multipart object lies (inclusive), and how many parts it has."""

    first: int
    last: int
    count: int


class _Upload(NamedTuple):
    """One unfinished upload as ListMultipartUploads orders it."""

    key: str
    initiated: float
    upload_id: str


def ensure_bucket(manifest: Manifest) -> None:
    """Create the internal bucket once (a concurrent creator winning is fine)."""
    if manifest.get_bucket(UPLOADS) is None:
        with contextlib.suppress(IntegrityError):
            manifest.create_bucket(BucketRecord(UPLOADS, "", time.time(), ""))


def _part_key(upload_id: str, number: int) -> str:
    return f"{upload_id}/{number:05d}"


def _number_of(part: ObjectRecord) -> int:
    return int(part.key.rsplit("/", 1)[1])


def new_upload_id(now: float) -> str:
    """The initiation time (microseconds, fixed-width hex), then randomness.

    Ids of one key then sort in initiation order, so S3's rule "uploads of the marker key
    with an id lexicographically after upload-id-marker" also means "started later".
    """
    return f"{int(now * 1_000_000):014x}{secrets.token_hex(9)}"


def part_number(text: str) -> int:
    """A ``partNumber`` parameter: 1 to 10,000, else InvalidArgument as S3 answers."""
    try:
        number = int(text)
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_PART:
        raise S3Error("InvalidArgument", "Part number must be an integer between 1 and "
                      "10000, inclusive", ArgumentName="partNumber", ArgumentValue=text)
    return number


def _count(params: dict[str, str], name: str, default: int) -> int:
    """A non-negative integer query parameter (max-uploads, max-parts, markers)."""
    text = params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise S3Error("InvalidArgument", f"Provided {name} not an integer or within "
                      "integer range", ArgumentName=name, ArgumentValue=text)
    return value


# -- part layout of completed objects (GET/HEAD ?partNumber) ----------------------------


def part_layout(sizes: list[int]) -> list[list[int]]:
    """Part sizes run-length encoded: 10,000 equal parts are one pair, not 10,000 numbers."""
    runs: list[list[int]] = []
    for size in sizes:
        if runs and runs[-1][0] == size:
            runs[-1][1] += 1
        else:
            runs.append([size, 1])
    return runs


def layout_of(record: ObjectRecord) -> dict[str, Any]:
    """The part-layout entry of an object's metadata; {} for an object stored in one piece.

    A copy keeps it whatever its metadata directive: the copy keeps the source's ``-N``
    ETag (no byte is read to compute another), and the parts must keep matching it.
    """
    runs = record.metadata.get(PARTS_KEY)
    return {PARTS_KEY: runs} if runs else {}


def _invalid_part_number() -> S3Error:
    return S3Error("InvalidPartNumber")


def part_span(record: ObjectRecord, text: str) -> PartSpan | None:
    """Part ``text`` of an object, for GET/HEAD ``?partNumber``.

    None stands for the whole object answered as a plain GET: what S3 does for part 1 of
    an object not uploaded in parts. A part beyond the last is ``InvalidPartNumber``.
    """
    number = part_number(text)
    runs = record.metadata.get(PARTS_KEY)
    if not runs:
        if number == 1:
            return None
        raise _invalid_part_number()
    first = index = 0
    for size, count in runs:
        if number <= index + count:
            first += (number - 1 - index) * size
            return PartSpan(first, first + size - 1, sum(n for _, n in runs))
        first += size * count
        index += count
    raise _invalid_part_number()


def copy_range(value: str | None, size: int) -> tuple[int, int]:
    """(first, last) of ``x-amz-copy-source-range``, which must lie inside the source.

    Unlike GET's Range, S3 accepts only ``bytes=first-last`` here and answers anything
    else, or a range past the source's end, with InvalidArgument.
    """
    if value is None:
        return 0, size - 1
    match = _COPY_RANGE.fullmatch(value.strip())
    if not match or int(match[1]) > int(match[2]):
        raise S3Error("InvalidArgument", "The x-amz-copy-source-range value must be of the "
                      "form bytes=first-last where first and last are the zero-based "
                      "offsets of the first and last bytes to copy",
                      ArgumentName="x-amz-copy-source-range", ArgumentValue=value)
    first, last = int(match[1]), int(match[2])
    if last >= size:
        raise S3Error("InvalidArgument", "Range specified is not valid for source object "
                      f"of size: {size}", ArgumentName="x-amz-copy-source-range",
                      ArgumentValue=value)
    return first, last


def iter_uploads(manifest: Manifest) -> Iterator[ObjectRecord]:
    """Every unfinished upload (all buckets and owners), without reading most parts.

    Parts (``<id>/<5 digits>``) sort right after their upload ``<id>`` and nothing else
    starts with an id (all have the same length), so each page resumes past all the
    parts of the upload it ended in or on.
    """
    after = ""
    while True:
        page = manifest.list_objects(UPLOADS, start_after=after, limit=MAX_LISTED)
        if not page:
            return
        yield from (record for record in page if "/" not in record.key)
        after = page[-1].key.split("/", 1)[0] + "/~"


def _after_marker(uploads: list[_Upload], key_marker: str, id_marker: str) -> list[_Upload]:
    """The uploads after (key-marker, upload-id-marker), as S3 defines them."""
    if not key_marker:
        return uploads
    if not id_marker:
        return [u for u in uploads if u.key > key_marker]
    for index, upload in enumerate(uploads):
        if (upload.key, upload.upload_id) == (key_marker, id_marker):
            return uploads[index + 1:]
    # The marker upload is gone (completed, aborted): ids sort by initiation time.
    return [u for u in uploads if u.key > key_marker
            or (u.key == key_marker and u.upload_id > id_marker)]


def _page(uploads: list[_Upload], prefix: str, delimiter: str, key_marker: str,
          limit: int) -> tuple[list[tuple[str, _Upload | None]], bool]:
    """Up to ``limit`` entries, each an upload or a common prefix standing for all the
    uploads under it (counted once, as S3 does); and whether more follow."""
    page: list[tuple[str, _Upload | None]] = []
    for upload in uploads:
        at = upload.key.find(delimiter, len(prefix)) if delimiter else -1
        entry: tuple[str, _Upload | None] = (upload.key, upload)
        if at >= 0:
            common = upload.key[: at + len(delimiter)]
            if common <= key_marker or (page and page[-1][0] == common):
                continue  # listed on an earlier page, or just now
            entry = (common, None)
        if len(page) == limit:
            return page, limit > 0
        page.append(entry)
    return page, False


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
        ensure_bucket(self.manifest)  # a cluster may have had no quorum at start-up
        now = time.time()
        upload_id = new_upload_id(now)
        metadata = {"bucket": bucket, "key": key, "owner": self.h.owner,
                    "content-type": self.h.headers.get("content-type", ""),
                    "headers": self.h.request_metadata()}
        self.manifest.put_object(ObjectRecord(UPLOADS, upload_id, 0, "", now, "", metadata))
        return self.xml(f'<InitiateMultipartUploadResult xmlns="{XMLNS}"><Bucket>'
                        f"{escape(bucket)}</Bucket><Key>{escape(key)}</Key><UploadId>"
                        f"{upload_id}</UploadId></InitiateMultipartUploadResult>")

    def upload_part(self, bucket: str, key: str) -> Response:
        from enigma_gateway_s3.app import Response
        from enigma_gateway_s3.body import open_body

        self.h.require_bucket(bucket)
        number = part_number(self.h.params.get("partNumber", ""))
        upload_id, _ = self._upload(bucket, key)
        if "x-amz-copy-source" in self.h.headers:
            return self._copy_part(upload_id, number)
        body = open_body(self.h.pull, self.h.headers, self.h.auth)
        try:
            part = self.h.app.store.put(UPLOADS, _part_key(upload_id, number), body, "", {})
        except NotFoundError:
            raise S3Error("InternalError", "the multipart bucket is missing") from None
        self._keep_if_alive(upload_id, part)
        return Response(200, [("ETag", f'"{part.etag}"'), ("Content-Length", "0")])

    def _keep_if_alive(self, upload_id: str, part: ObjectRecord) -> None:
        """Aborted or completed while this part was being written: drop the orphan part."""
        if self.manifest.get_object(UPLOADS, upload_id) is None:
            self.manifest.delete_object(UPLOADS, part.key)
            raise S3Error("NoSuchUpload", UploadId=upload_id)

    def _copy_part(self, upload_id: str, number: int) -> Response:
        """UploadPartCopy: the part references the source's chunks; only the partial
        chunks at the edges of a range are read and stored again."""
        from enigma_gateway_s3.app import iso_time

        source = self.h.copy_source()
        first, last = copy_range(self.h.headers.get("x-amz-copy-source-range"), source.size)
        store, key = self.h.app.store, _part_key(upload_id, number)
        try:
            if (first, last) == (0, source.size - 1) and "-" not in source.etag:
                # All of an object stored in one piece: its ETag is already the MD5 of its
                # bytes, so not a byte is read.
                part = store.put_spliced(UPLOADS, key, source.chunks, lambda: source.etag)
            else:
                md5 = hashlib.md5()
                part = store.put_spliced(UPLOADS, key,
                                         self._copy_segments(source, first, last, md5),
                                         md5.hexdigest)
        except NotFoundError:
            raise S3Error("InternalError", "the multipart bucket is missing") from None
        self._keep_if_alive(upload_id, part)
        return self.xml(f'<CopyPartResult xmlns="{XMLNS}"><LastModified>'
                        f"{iso_time(part.created_at)}</LastModified><ETag>&quot;{part.etag}"
                        "&quot;</ETag></CopyPartResult>")

    def _copy_segments(self, source: ObjectRecord, first: int, last: int,
                       md5: Any) -> Iterator[ChunkRef | bytes]:
        """Bytes ``first..last`` of ``source``: its chunks wholly inside by reference, the
        partial ones at the edges as bytes. Every byte is hashed on the way, since S3
        gives a part the MD5 of its bytes as ETag."""
        covered = [r for r in source.chunks if r.offset + r.length > first and r.offset <= last]
        pieces = self.h.app.store.read(source, first, last)  # one piece per covered chunk
        try:
            for ref, data in zip(covered, pieces, strict=True):
                md5.update(data)
                inside = first <= ref.offset and ref.offset + ref.length <= last + 1
                yield ref if inside else data
        finally:
            pieces.close()  # type: ignore[attr-defined]

    def _parts(self, upload_id: str, after: int = 0, limit: int = MAX_PART + 1
               ) -> list[ObjectRecord]:
        return self.manifest.list_objects(
            UPLOADS, prefix=f"{upload_id}/",
            start_after=_part_key(upload_id, after) if after else "", limit=limit)

    def complete(self, bucket: str, key: str) -> Response:
        self.h.require_bucket(bucket)
        upload_id, upload = self._upload(bucket, key)
        try:
            root = ElementTree.fromstring(self.h.read_small_body(4 << 20, object_checksums=True))
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
        have = {_number_of(p): p for p in self._parts(upload_id)}
        chunks: list[ChunkRef] = []
        digests = b""
        sizes: list[int] = []
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
            sizes.append(part.size)
            size += part.size
        etag = f"{hashlib.md5(digests).hexdigest()}-{len(wanted)}"
        meta = upload.metadata
        metadata = {**meta.get("headers", {}), PARTS_KEY: part_layout(sizes)}
        record = ObjectRecord(bucket, key, size, etag, time.time(),
                              meta.get("content-type", ""), metadata, chunks)
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
        marker = min(_count(self.h.params, "part-number-marker", 0), MAX_PART)
        limit = min(_count(self.h.params, "max-parts", MAX_LISTED), MAX_LISTED)
        parts = self._parts(upload_id, after=marker, limit=limit + 1)
        page, truncated = parts[:limit], len(parts) > limit
        rows = "".join(
            f"<Part><PartNumber>{_number_of(p)}</PartNumber><LastModified>"
            f"{iso_time(p.created_at)}</LastModified><ETag>&quot;{p.etag}&quot;</ETag>"
            f"<Size>{p.size}</Size></Part>" for p in page)
        last = _number_of(page[-1]) if page else marker
        return self.xml(
            f'<ListPartsResult xmlns="{XMLNS}"><Bucket>{escape(bucket)}</Bucket><Key>'
            f"{escape(key)}</Key><UploadId>{upload_id}</UploadId>{self._people()}"
            f"<StorageClass>STANDARD</StorageClass><PartNumberMarker>{marker}"
            f"</PartNumberMarker><NextPartNumberMarker>{last}</NextPartNumberMarker>"
            f"<MaxParts>{limit}</MaxParts><IsTruncated>{str(truncated).lower()}"
            f"</IsTruncated>{rows}</ListPartsResult>")

    def _people(self) -> str:
        """Initiator and Owner elements: the caller, the only one who sees its uploads."""
        owner = escape(self.h.owner)
        who = f"<ID>{owner}</ID><DisplayName>{owner}</DisplayName>"
        return f"<Initiator>{who}</Initiator><Owner>{who}</Owner>"

    def list_uploads(self, bucket: str) -> Response:
        """ListMultipartUploads: by key, then initiation time; markers, prefix, delimiter.

        Uploads are not indexed by bucket (see the module docstring), so this reads every
        upload's row: fine for the handfuls of unfinished uploads a bucket has.
        """
        self.h.require_bucket(bucket)
        p = self.h.params
        prefix, delimiter = p.get("prefix", ""), p.get("delimiter", "")
        key_marker = p.get("key-marker", "")
        id_marker = p.get("upload-id-marker", "") if key_marker else ""
        limit = min(_count(p, "max-uploads", MAX_LISTED), MAX_LISTED)
        encoding = p.get("encoding-type")
        if encoding not in (None, "url"):
            raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request")
        uploads = sorted(
            _Upload(str(r.metadata["key"]), r.created_at, r.key)
            for r in iter_uploads(self.manifest)
            if r.metadata.get("bucket") == bucket and r.metadata.get("owner") == self.h.owner
            and str(r.metadata.get("key", "")).startswith(prefix))
        entries, truncated = _page(_after_marker(uploads, key_marker, id_marker), prefix,
                                   delimiter, key_marker, limit)
        return self.xml(self._uploads_xml(bucket, entries, truncated, limit, encoding))

    def _uploads_xml(self, bucket: str, entries: list[tuple[str, _Upload | None]],
                     truncated: bool, limit: int, encoding: str | None) -> str:
        from enigma_gateway_s3.app import iso_time

        def enc(text: str) -> str:
            return escape(quote(text, safe="/") if encoding == "url" else text)

        p = self.h.params
        people = self._people()
        rows = [f"<Upload><Key>{enc(u.key)}</Key><UploadId>{u.upload_id}</UploadId>{people}"
                f"<StorageClass>STANDARD</StorageClass><Initiated>{iso_time(u.initiated)}"
                "</Initiated></Upload>" for _name, u in entries if u is not None]
        commons = [f"<CommonPrefixes><Prefix>{enc(name)}</Prefix></CommonPrefixes>"
                   for name, u in entries if u is None]
        last_name, last = entries[-1] if entries else ("", None)
        delimiter = f"<Delimiter>{enc(p['delimiter'])}</Delimiter>" if p.get("delimiter") \
            else ""
        return (
            f'<ListMultipartUploadsResult xmlns="{XMLNS}"><Bucket>{escape(bucket)}</Bucket>'
            f"<KeyMarker>{enc(p.get('key-marker', ''))}</KeyMarker><UploadIdMarker>"
            f"{escape(p.get('upload-id-marker', ''))}</UploadIdMarker><NextKeyMarker>"
            f"{enc(last_name)}</NextKeyMarker><NextUploadIdMarker>"
            f"{last.upload_id if last else ''}</NextUploadIdMarker><Prefix>"
            f"{enc(p.get('prefix', ''))}</Prefix>{delimiter}<MaxUploads>{limit}</MaxUploads>"
            f"<IsTruncated>{str(truncated).lower()}</IsTruncated>{''.join(rows)}"
            f"{''.join(commons)}"
            f"{'<EncodingType>url</EncodingType>' if encoding else ''}"
            "</ListMultipartUploadsResult>")


def expire_uploads(manifest: Manifest, older_than: float) -> int:
    """Discard unfinished uploads started before ``older_than`` (a Unix time), parts too."""
    expired = [r.key for r in iter_uploads(manifest) if r.created_at < older_than]
    for upload_id in expired:
        manifest.delete_object(UPLOADS, upload_id)
        for part in manifest.list_objects(UPLOADS, prefix=f"{upload_id}/", limit=MAX_PART + 1):
            manifest.delete_object(UPLOADS, part.key)
    return len(expired)


class Sweeper:
    """Expires abandoned uploads now and then (every quarter of the expiry, at most
    hourly) on a daemon thread, until ``stop``."""

    def __init__(self, manifest: Manifest, expiry: float) -> None:
        self.manifest = manifest
        self.expiry = expiry
        interval = min(3600.0, max(expiry / 4, 0.5)) if expiry > 0 else 0
        self._periodic = Periodic("expiring multipart uploads", interval, self.sweep,
                                  at_start=True)

    def start(self) -> None:
        self._periodic.start()

    def sweep(self) -> None:
        if self.manifest.is_leader():  # one node of a cluster sweeps for all
            expire_uploads(self.manifest, time.time() - self.expiry)

    def stop(self) -> None:
        self._periodic.stop()
