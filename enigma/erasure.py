"""Reed-Solomon shards of a sealed chunk: the shard object format and the codec (zfec).

Under the Erasure policy a sealed chunk is cut into ``k`` data shards (plain slices of it,
the last one zero-padded) and ``m`` parity shards, each stored on its own provider under
the chunk's usual name. Any ``k`` shards of one encoding give the sealed chunk back, whose
AES-GCM tag is then the real check.

Shard object, format version 1 (stable; changing it needs a version bump)::

    offset  size  field
    0       4     magic b"ENGS"
    4       1     format version (1)
    5       1     k: data shards
    6       1     m: parity shards
    7       1     this shard's index (0 .. k+m-1; below k it is a slice of the sealed chunk)
    8       4     length of the sealed chunk, u32 big-endian
    12      8     set id: the first 8 bytes of the sealed chunk's AES-GCM tag
    20      4     CRC-32 of the payload, u32 big-endian
    24      ...   payload: ceil(length / k) bytes

An object is self-describing: a reader needs neither the manifest nor the config to know
that it is a shard and which one. The set id tells apart the encodings of two writers that
sealed the same chunk at once (each with its own nonce, hence tag): shards of different
sets never combine. The CRC finds an accidentally damaged shard before any decoding;
deliberate tampering is caught by AES-GCM after decoding, and the reader tries other
shards. Nothing here reveals more than the sealed chunk's own size already does.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from enigma.crypto import TAG_SIZE
from enigma.errors import IntegrityError

__all__ = ["HEADER_SIZE", "MAGIC", "MAX_SHARDS", "Shard", "check_layout", "decode", "encode",
           "is_shard", "parse", "shard_object_size"]

MAGIC = b"ENGS"
FORMAT_VERSION = 1
#: zfec works over GF(2^8) (at most 256 shares); the index must fit one byte.
MAX_SHARDS = 255
SET_ID_SIZE = 8
_HEADER = struct.Struct(">4sBBBBI8sI")
HEADER_SIZE = _HEADER.size


@dataclass(frozen=True)
class Shard:
    """One parsed shard object; ``payload`` is a view into the object it came from."""

    data_shards: int
    parity_shards: int
    index: int
    sealed_length: int
    set_id: bytes
    payload: memoryview

    @property
    def encoding(self) -> tuple[bytes, int, int, int]:
        """What shards must share to be decoded together."""
        return self.set_id, self.data_shards, self.parity_shards, self.sealed_length


def check_layout(data_shards: int, parity_shards: int) -> None:
    """``ValueError`` unless ``k >= 1``, ``m >= 1`` and ``k + m <= 255``."""
    if data_shards < 1 or parity_shards < 1 or data_shards + parity_shards > MAX_SHARDS:
        raise ValueError(f"need data_shards >= 1, parity_shards >= 1 and at most "
                         f"{MAX_SHARDS} shards in all, got {data_shards}+{parity_shards}")


def shard_object_size(sealed_length: int, data_shards: int) -> int:
    """Bytes of one shard object of a sealed chunk of ``sealed_length`` bytes."""
    return HEADER_SIZE + -(-sealed_length // data_shards)


def is_shard(blob: bytes | memoryview) -> bool:
    """Whether a stored chunk object is a shard (rather than a whole sealed chunk)."""
    return bytes(blob[:4]) == MAGIC


def encode(sealed: bytes | memoryview, data_shards: int, parity_shards: int) -> list[bytes]:
    """The ``k + m`` shard objects of a sealed chunk, in index order."""
    import zfec  # C extension: loaded only when a chunk is erasure coded

    check_layout(data_shards, parity_shards)
    view = memoryview(sealed)
    length = len(view)
    if length < TAG_SIZE or length > 0xFFFFFFFF:
        raise ValueError(f"cannot shard a sealed chunk of {length} bytes")
    size = -(-length // data_shards)
    blocks: list[bytes | memoryview] = [view[i * size:(i + 1) * size]
                                        for i in range(data_shards)]
    blocks[-1] = bytes(blocks[-1]) + bytes(size - len(blocks[-1]))  # zero padding
    total = data_shards + parity_shards
    parity = zfec.Encoder(data_shards, total).encode(
        blocks, list(range(data_shards, total)))
    set_id = bytes(view[length - TAG_SIZE:length - TAG_SIZE + SET_ID_SIZE])
    return [
        _HEADER.pack(MAGIC, FORMAT_VERSION, data_shards, parity_shards, index, length,
                     set_id, zlib.crc32(payload)) + payload
        for index, payload in enumerate([*blocks, *parity])
    ]


def parse(blob: bytes | memoryview) -> Shard:
    """Decode and check a shard object; ``IntegrityError`` if it is not a sound one."""
    view = memoryview(blob)
    if len(view) < HEADER_SIZE:
        raise IntegrityError(f"shard truncated: {len(view)} bytes is shorter than a header")
    magic, version, k, m, index, length, set_id, crc = _HEADER.unpack_from(view)
    if magic != MAGIC:
        raise IntegrityError("not an Enigma shard (bad magic)")
    if version != FORMAT_VERSION:
        raise IntegrityError(f"shard has format version {version}; this Enigma reads version "
                             f"{FORMAT_VERSION} (upgrade Enigma?)")
    try:
        check_layout(k, m)
    except ValueError as exc:
        raise IntegrityError(f"shard header is damaged: {exc}") from None
    if index >= k + m:
        raise IntegrityError(f"shard header is damaged: index {index} of {k}+{m} shards")
    payload = view[HEADER_SIZE:]
    if len(payload) != -(-length // k):
        raise IntegrityError(f"shard {index} truncated or padded: {len(payload)} bytes, "
                             f"expected {-(-length // k)}")
    if zlib.crc32(payload) != crc:
        raise IntegrityError(f"shard {index} is damaged (CRC-32 mismatch)")
    return Shard(k, m, index, length, set_id, payload)


def decode(shards: Sequence[Shard]) -> bytes:
    """The sealed chunk from ``k`` distinct shards of one encoding (not yet authenticated)."""
    if not shards:
        raise ValueError("no shards to decode")
    first = shards[0]
    k, total = first.data_shards, first.data_shards + first.parity_shards
    chosen = {s.index: s for s in shards}
    if len(chosen) != len(shards) or len(shards) != k:
        raise ValueError(f"need exactly {k} distinct shards, got indices {sorted(chosen)}")
    if any(s.encoding != first.encoding for s in shards):
        raise ValueError("shards of different encodings cannot be decoded together")
    indices = sorted(chosen)
    if indices == list(range(k)):  # every data shard is here: no arithmetic needed
        blocks: Sequence[bytes | memoryview] = [chosen[i].payload for i in indices]
    else:
        import zfec

        blocks = zfec.Decoder(k, total).decode([chosen[i].payload for i in indices], indices)
    return b"".join(blocks)[:first.sealed_length]
