"""Fills pack objects (``enigma.packs``) with small sealed chunks as a backup makes them.

One pack is open per set of providers (a chunk's pack goes wherever the distribution
policy put the chunk). A chunk learns its pack and offset when it is added, but its
future resolves only once the whole pack is stored, so nothing reaches the manifest
before its bytes are on the backend: the crash-safety order of single objects holds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from enigma.manifest import ChunkRecord
from enigma.packs import PackEntry, encode_trailer, new_pack_id, pack_key


class Member(Protocol):
    """What waits for a pack: told once per provider that stored it, or of the failure."""

    def stored(self) -> None: ...

    def failed(self, exc: BaseException) -> None: ...


#: ``ship(labels, key, blob, members)``: store the finished pack on each provider.
Ship = Callable[[tuple[str, ...], str, bytes, list[Member]], None]


class _OpenPack:
    def __init__(self, labels: tuple[str, ...]) -> None:
        self.pack_id = new_pack_id()
        self.labels = labels
        self.parts: list[bytes] = []
        self.entries: list[PackEntry] = []
        self.members: list[Member] = []
        self.size = 0


class Packer:
    """Collects sealed chunks into packs and hands each full (or flushed) pack to ``ship``.

    Safe from many threads; ``seal(id, payload)`` seals the pack's index. ``target``
    bytes close a pack: small enough that a partly dead pack wastes little and that the
    packs in flight fit the pipeline's memory budget (``[enigma] pack_size``).
    """

    def __init__(self, seal: Callable[[bytes, bytes], bytes], ship: Ship, *,
                 target: int) -> None:
        self._seal = seal
        self._ship = ship
        self.target = target
        self._open: dict[tuple[str, ...], _OpenPack] = {}
        self._lock = threading.Lock()

    def add(self, record: ChunkRecord, sealed: bytes, member: Member) -> None:
        """Append a sealed chunk to the open pack of its providers; sets ``record.pack``
        and ``record.offset``. Ships the pack on this thread once it is full."""
        labels = tuple(sorted(record.providers))  # Replicate rotates the order
        with self._lock:
            pack = self._open.get(labels)
            if pack is None:
                pack = self._open[labels] = _OpenPack(labels)
            record.pack, record.offset = pack.pack_id, pack.size
            pack.parts.append(sealed)
            pack.entries.append(PackEntry(record.id, pack.size, len(sealed)))
            pack.members.append(member)
            pack.size += len(sealed)
            full = pack.size >= self.target
            if full:
                del self._open[labels]
        if full:
            self._finish(pack)

    def flush(self) -> None:
        """Ship every open pack, however small (the pipeline has gone idle)."""
        with self._lock:
            packs = list(self._open.values())
            self._open.clear()
        for pack in packs:
            self._finish(pack)

    def _finish(self, pack: _OpenPack) -> None:
        try:
            blob = b"".join(pack.parts) + encode_trailer(pack.pack_id, pack.entries, self._seal)
        except BaseException as exc:  # handed to every chunk waiting for the pack
            for member in pack.members:
                member.failed(exc)
            return
        pack.parts.clear()
        self._ship(pack.labels, pack_key(pack.pack_id), blob, pack.members)
