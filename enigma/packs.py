"""Pack objects: many small sealed chunks in one stored object.

Why: a backup of 20,000 small files would otherwise create 20,000 objects, and on every
backend the per-object cost (a local file's create, write, rename and directory entry; a
cloud's PUT request and minimum billable size) outweighs the bytes. restic and borg pack
for the same reason.

Format 1 (``packs/<2 hex>/<64 hex>``, the name is a random 32-byte pack id)::

    sealed chunk | sealed chunk | ... | sealed index | footer

Each sealed chunk is byte for byte what a standalone chunk object would hold (header,
nonce, AES-256-GCM with the chunk id in the AAD), so it authenticates on its own once read
by its manifest record's (pack, offset, stored size). The sealed index lists
``(chunk id, offset, length)`` for every chunk and is sealed with the current data key
under an id derived from the pack id (``index_id``), so it cannot be moved to another
pack; it makes a pack self-describing for ``enigma recover`` when no manifest is left.
The footer is ``ENGP | version u8 | sealed index length u32 BE``. A provider sees one
object of a few MiB and learns neither how many chunks it holds nor their ids.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from enigma.errors import IntegrityError

PACK_PREFIX = "packs/"
MAGIC = b"ENGP"
FORMAT_VERSION = 1
PACK_ID_SIZE = 32
#: Chunks whose sealed size is below this go into packs; larger ones stay single objects
#: (one object per MiB already costs next to nothing, and a whole object is simpler to
#: repair and to garbage-collect).
PACK_CHUNK_LIMIT = 512 * 1024

# magic(4) | version u8 | sealed index length u32 BE
_FOOTER = struct.Struct(">4sBI")
# chunk id(32) | offset u64 BE | length u32 BE
_ENTRY = struct.Struct(">32sQI")


def new_pack_id() -> bytes:
    """A fresh random pack id: decided before any write, as manifest operations need."""
    return os.urandom(PACK_ID_SIZE)


def pack_key(pack_id: bytes) -> str:
    """Object name of a pack: ``packs/<2 hex>/<64 hex>``."""
    hexid = pack_id.hex()
    return f"{PACK_PREFIX}{hexid[:2]}/{hexid}"


def pack_id_from_key(key: str) -> bytes | None:
    """Inverse of ``pack_key``; None for anything that is not a pack object."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != PACK_PREFIX.rstrip("/") or len(parts[2]) != 64:
        return None
    try:
        pack_id = bytes.fromhex(parts[2])
    except ValueError:
        return None
    return pack_id if pack_key(pack_id) == key else None


def index_id(pack_id: bytes) -> bytes:
    """The id the pack's index is sealed under (in place of a chunk id): bound to the
    pack, and never equal to a chunk id, which is an HMAC under the secret id key."""
    return hashlib.sha256(b"enigma-pack-index-v1" + pack_id).digest()


@dataclass(frozen=True)
class PackEntry:
    """One chunk inside a pack."""

    chunk_id: bytes
    offset: int
    length: int


def encode_trailer(pack_id: bytes, entries: list[PackEntry],
                   seal: Callable[[bytes, bytes], bytes]) -> bytes:
    """The sealed index and footer that end a pack; ``seal(id, payload)`` seals."""
    index = b"".join(_ENTRY.pack(e.chunk_id, e.offset, e.length) for e in entries)
    sealed = seal(index_id(pack_id), index)
    return sealed + _FOOTER.pack(MAGIC, FORMAT_VERSION, len(sealed))


def read_index(pack_id: bytes, blob: bytes | memoryview,
               open_: Callable[[bytes, bytes], bytes]) -> list[PackEntry]:
    """The entries of a whole pack, authenticated; ``open_(id, sealed)`` returns the
    payload or raises ``IntegrityError``. Entries outside the body are refused."""
    if len(blob) < _FOOTER.size:
        raise IntegrityError("pack truncated: shorter than its footer")
    magic, version, length = _FOOTER.unpack_from(blob, len(blob) - _FOOTER.size)
    if magic != MAGIC:
        raise IntegrityError("not an Enigma pack (bad magic)")
    if version != FORMAT_VERSION:
        raise IntegrityError(f"pack has format version {version}; this Enigma reads "
                             f"version {FORMAT_VERSION} (upgrade Enigma?)")
    body_end = len(blob) - _FOOTER.size - length
    if body_end < 0:
        raise IntegrityError("pack truncated: its index is cut short")
    index = open_(index_id(pack_id), bytes(blob[body_end:len(blob) - _FOOTER.size]))
    if len(index) % _ENTRY.size:
        raise IntegrityError("pack index has a partial entry")
    entries = [PackEntry(*fields) for fields in _ENTRY.iter_unpack(index)]
    for entry in entries:
        if entry.offset + entry.length > body_end:
            raise IntegrityError("pack index points past the pack's chunks")
    return entries
