"""Page diffs of a SQLite file: what an incremental manifest snapshot stores.

A page-for-page copy of the manifest (``Manifest.copy_pages_to``) has page N where the
live database has it, so two copies taken a backup apart differ only in the pages that
backup wrote: about 35 of 2,000 for a no-change re-backup at benchmark scale 1. A diff
holds those pages; applied over the base copy it gives back the newer copy byte for byte.

Diff plaintext (before the snapshot's compression and sealing, ``enigma.recovery``)::

    offset  size  field
    0       4     page size, u32 big-endian
    4       4     page count of the newer copy, u32 big-endian
    8       ...   records: page number (u32 big-endian, 1-based) then the page,
                  in ascending page order

The writer keeps the base's page digests beside the manifest (``BaseDigests``), so a
diff costs one copy and one hash pass over it, never a download of the base.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from enigma.errors import IntegrityError

_DIFF_HEADER = struct.Struct(">II")
_PAGE_NUMBER = struct.Struct(">I")
_DIGEST_SIZE = 16
_BASE_MAGIC = b"ENGD"
_BASE_HEADER = struct.Struct(">4sIIH")  # magic, page size, page count, name length
#: SQLite's page size bounds (the header's 1 means 65,536).
_MIN_PAGE, _MAX_PAGE = 512, 65536


def page_size(path: Path) -> int:
    """The page size a SQLite file's header declares."""
    with open(path, "rb") as fh:
        header = fh.read(100)
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        raise IntegrityError("not a SQLite database")
    size = int.from_bytes(header[16:18], "big")
    return _MAX_PAGE if size == 1 else size


def pages(path: Path, size: int) -> Iterator[bytes]:
    """The file's pages in order."""
    with open(path, "rb") as fh:
        while page := fh.read(size):
            yield page


def page_digests(path: Path) -> tuple[int, list[bytes]]:
    """(page size, a 16-byte BLAKE2b digest per page): enough to tell changed pages."""
    size = page_size(path)
    return size, [hashlib.blake2b(page, digest_size=_DIGEST_SIZE).digest()
                  for page in pages(path, size)]


def changed_pages(base: list[bytes], current: list[bytes]) -> list[int]:
    """0-based indexes of the pages of ``current`` that ``base`` lacks or has otherwise."""
    return [i for i, digest in enumerate(current) if i >= len(base) or base[i] != digest]


def write_diff(copy: Path, size: int, count: int, changed: list[int], out: BinaryIO) -> None:
    """The diff turning the base into ``copy``: its ``changed`` pages (0-based)."""
    out.write(_DIFF_HEADER.pack(size, count))
    with open(copy, "rb") as fh:
        for index in changed:
            fh.seek(index * size)
            out.write(_PAGE_NUMBER.pack(index + 1) + fh.read(size))


def apply_diff(diff: Path, database: Path) -> None:
    """Turn the base copy at ``database`` into the newer copy the diff describes.

    ``IntegrityError`` when the diff does not fit the base (another page size, a page past
    the end, a truncated record): only an authenticated diff gets here, so that means its
    base is not the one it was made against.
    """
    with open(diff, "rb") as source, open(database, "r+b") as target:
        header = source.read(_DIFF_HEADER.size)
        if len(header) < _DIFF_HEADER.size:
            raise IntegrityError("truncated snapshot diff")
        size, count = _DIFF_HEADER.unpack(header)
        if not _MIN_PAGE <= size <= _MAX_PAGE or size != page_size(database):
            raise IntegrityError("snapshot diff does not fit its base (page size)")
        while number := source.read(_PAGE_NUMBER.size):
            (page_number,) = _PAGE_NUMBER.unpack(number)
            page = source.read(size)
            if len(page) != size or not 0 < page_number <= count:
                raise IntegrityError("snapshot diff has a truncated or misplaced page")
            target.seek((page_number - 1) * size)
            target.write(page)
        target.truncate(count * size)
        target.flush()
        os.fsync(target.fileno())


@dataclass
class BaseDigests:
    """The last full snapshot this manifest stored (on at least one provider: a diff is
    written only once every provider holds its base), and its page digests: the local
    state that lets the next snapshot be a diff.

    Kept in ``<manifest>-pages`` (mode 0600). Holds no secret, only digests of pages of
    the local manifest; a missing, short or foreign file just means the next snapshot is
    a full one.
    """

    name: str
    page_size: int
    digests: list[bytes]

    @staticmethod
    def path_for(database: Path) -> Path:
        return database.with_name(database.name + "-pages")

    @classmethod
    def load(cls, database: Path) -> BaseDigests | None:
        try:
            data = cls.path_for(database).read_bytes()
        except OSError:
            return None
        if len(data) < _BASE_HEADER.size:
            return None
        magic, size, count, name_length = _BASE_HEADER.unpack_from(data)
        start = _BASE_HEADER.size + name_length
        if magic != _BASE_MAGIC or len(data) != start + count * _DIGEST_SIZE:
            return None
        name = data[_BASE_HEADER.size:start].decode("ascii", "replace")
        digests = [data[i:i + _DIGEST_SIZE] for i in range(start, len(data), _DIGEST_SIZE)]
        return cls(name, size, digests)

    def save(self, database: Path) -> None:
        """Write atomically: a crash leaves the old state or the new, never a mix."""
        target = self.path_for(database)
        temporary = target.with_name(target.name + ".tmp")
        name = self.name.encode("ascii")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(_BASE_HEADER.pack(_BASE_MAGIC, self.page_size, len(self.digests),
                                        len(name)) + name)
            out.write(b"".join(self.digests))
        os.replace(temporary, target)
