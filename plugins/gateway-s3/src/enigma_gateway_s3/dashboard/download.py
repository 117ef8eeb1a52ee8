"""Single-file download: a backed-up file's chunks fetched, decrypted and sent as they come.

The bytes come from the gateway's GET path (``ObjectStore.read``: parallel read-ahead
within 8 MiB, every chunk authenticated), so memory stays flat whatever the file's size.
The first chunk is fetched before the response starts, so a missing or damaged chunk is
a proper error page rather than a truncated 200.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from urllib.parse import quote

import anyio
import anyio.to_thread
from starlette.responses import StreamingResponse

from enigma.manifest import FileEntry, ObjectRecord
from enigma_gateway_s3.app import started_read
from enigma_gateway_s3.store import ObjectStore

#: Largest piece handed to the HTTP server at once (as the S3 GET path does).
SEND_SLICE = 512 * 1024


def content_disposition(path: str) -> str:
    """``attachment`` with the file's base name: an ASCII fallback and the exact UTF-8 name
    (RFC 6266 / 5987); quotes, backslashes and control characters never get through."""
    name = path.rsplit("/", 1)[-1]
    clean = "".join(c for c in name if c.isprintable() and c not in '"\\') or "download"
    fallback = "".join(c if " " <= c <= "~" else "_" for c in clean)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(clean, safe='')}"


def open_pieces(store: ObjectStore, entry: FileEntry) -> Iterator[bytes]:
    """The file's plaintext in pieces; fetches the first chunk now (runs on a thread)."""
    if entry.size == 0:
        return nothing()
    record = ObjectRecord(bucket="", key=entry.path, size=entry.size, etag="",
                          created_at=0.0, chunks=entry.chunks)
    return started_read(store, record, 0, entry.size - 1)


def nothing() -> Iterator[bytes]:
    """An empty body that, like every body here, is a generator (it has ``close``)."""
    yield from ()


async def _relay(pieces: Iterator[bytes]) -> AsyncIterator[bytes | memoryview]:
    """Each piece fetched on a worker thread and passed on in slices; the iterator is
    closed on a thread (its read-ahead pool waits for fetches in flight) even when the
    client goes away mid-file and the response is cancelled."""
    try:
        while True:
            piece = await anyio.to_thread.run_sync(next, pieces, None)
            if piece is None:
                return
            view = memoryview(piece)
            for at in range(0, len(view), SEND_SLICE):
                yield view[at:at + SEND_SLICE]
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(pieces.close)  # type: ignore[attr-defined]


def download_response(entry: FileEntry, pieces: Iterator[bytes]) -> StreamingResponse:
    headers = {"Content-Disposition": content_disposition(entry.path),
               "Content-Length": str(entry.size), "Cache-Control": "no-store"}
    return StreamingResponse(_relay(pieces), media_type="application/octet-stream",
                             headers=headers)
