"""Which providers store each new chunk, and how redundantly.

RoundRobin and Weighted put each chunk on one provider; Replicate puts whole copies on N
distinct providers; Erasure splits each sealed chunk into k data + m parity Reed-Solomon
shards on k+m distinct providers (``enigma.erasure`` has the codec and shard format). All
are deterministic and keep their position under a lock, because the upload pipeline asks
from many threads at once. Each carries a ``redundancy`` that tells the chunk store what
to write and ``enigma status`` what the repository survives.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from enigma.errors import ConfigError
from enigma.interfaces import DistributionPolicy, ProviderSlot

__all__ = ["DISTRIBUTION_POLICIES", "Erasure", "Redundancy", "Replicate", "RoundRobin",
           "Weighted", "redundancy_of"]


@dataclass(frozen=True)
class Redundancy:
    """How a policy stores each chunk: ``copies`` whole copies, or (when ``data_shards`` is
    set) ``data_shards`` + ``parity_shards`` Reed-Solomon shards, one per provider."""

    copies: int = 1
    data_shards: int = 0
    parity_shards: int = 0

    @property
    def erasure(self) -> bool:
        return self.data_shards > 0

    @property
    def factor(self) -> float:
        """Stored bytes per sealed byte (shard headers aside)."""
        if self.erasure:
            return (self.data_shards + self.parity_shards) / self.data_shards
        return float(self.copies)

    @property
    def tolerates(self) -> int:
        """How many of a chunk's providers may be lost with the chunk still readable."""
        return self.parity_shards if self.erasure else self.copies - 1

    def describe(self) -> str:
        if self.erasure:
            return f"{self.data_shards}+{self.parity_shards} Reed-Solomon shards"
        return "1 copy" if self.copies == 1 else f"{self.copies} copies"


def redundancy_of(policy: DistributionPolicy) -> Redundancy:
    """A policy's redundancy; a third-party policy without one stores whole copies."""
    found = getattr(policy, "redundancy", None)
    return found if isinstance(found, Redundancy) else Redundancy()


def _count(key: str, value: Any, minimum: int = 1) -> int:
    """An integer option, or a ConfigError naming the key (construct adds file and table)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"'{key}' must be an integer >= {minimum}, got {value!r}")
    return value


def _enough_providers(keys: str, needed: int, have: int) -> None:
    if needed > have:
        raise ConfigError(f"{keys} = {needed} needs {needed} distinct providers, but only "
                          f"{have} {'is' if have == 1 else 'are'} configured in [[providers]]")


class _Rotation:
    """``width`` consecutive labels starting one further each time: every provider gets the
    same share of the load, and the labels of one chunk are always distinct."""

    def __init__(self, labels: list[str], width: int) -> None:
        self._labels = labels
        self._width = width
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> list[str]:
        with self._lock:
            start = self._next
            self._next = (start + 1) % len(self._labels)
        n = len(self._labels)
        return [self._labels[(start + i) % n] for i in range(self._width)]


class RoundRobin(DistributionPolicy):
    """Providers in configured order, one chunk each, ignoring weights."""

    name = "round-robin"
    aliases = ("roundrobin",)
    description = "Each new chunk goes to the next provider in turn"
    redundancy = Redundancy()

    def __init__(self, providers: Sequence[ProviderSlot]) -> None:
        super().__init__(providers)
        self._labels = [slot.label for slot in self.providers]
        self._next = 0
        self._lock = threading.Lock()

    def choose(self, chunk_id: bytes, size: int) -> list[str]:
        with self._lock:
            label = self._labels[self._next]
            self._next = (self._next + 1) % len(self._labels)
        return [label]


class Weighted(DistributionPolicy):
    """Smooth weighted round-robin (nginx's algorithm).

    Every pick adds each provider's weight to its running score, takes the highest score
    (first in config order on ties) and subtracts the total weight from it. Over any
    ``sum(weights)`` consecutive picks each provider gets exactly its weight, and the picks
    are interleaved (weights 5,1,1 give a a b a c a a, not a a a a a b c), so no single
    provider takes a long burst of uploads.
    """

    name = "weighted"
    description = "Chunks spread over providers in proportion to their weight"
    redundancy = Redundancy()

    def __init__(self, providers: Sequence[ProviderSlot]) -> None:
        super().__init__(providers)
        for slot in self.providers:
            weight = slot.weight
            if not isinstance(weight, int) or isinstance(weight, bool) or weight < 1:
                raise ConfigError(
                    f"provider '{slot.label}': weight must be an integer >= 1, got {weight!r}"
                )
        self._labels = [slot.label for slot in self.providers]
        self._weights = [slot.weight for slot in self.providers]
        self._total = sum(self._weights)
        self._current = [0] * len(self._weights)
        self._lock = threading.Lock()

    def choose(self, chunk_id: bytes, size: int) -> list[str]:
        with self._lock:
            current = self._current
            best = 0
            for i, weight in enumerate(self._weights):
                current[i] += weight
                if current[i] > current[best]:
                    best = i
            current[best] -= self._total
        return [self._labels[best]]


class Replicate(DistributionPolicy):
    """Whole copies of each sealed chunk on ``copies`` distinct providers, rotating which
    ones (weights are ignored): any ``copies - 1`` providers may be lost."""

    name = "replicate"
    aliases = ("replication",)
    description = "Each new chunk stored whole on N distinct providers ([enigma.replication])"
    options_table = "replication"

    def __init__(self, providers: Sequence[ProviderSlot], copies: int = 2) -> None:
        super().__init__(providers)
        copies = _count("copies", copies)
        _enough_providers("'copies'", copies, len(self.providers))
        self.redundancy = Redundancy(copies=copies)
        self._rotation = _Rotation([slot.label for slot in self.providers], copies)

    def choose(self, chunk_id: bytes, size: int) -> list[str]:
        return self._rotation.take()


class Erasure(DistributionPolicy):
    """Reed-Solomon: each sealed chunk split into ``data_shards`` (k) + ``parity_shards``
    (m) shards on k+m distinct providers, rotating which ones; any m providers may be lost,
    for a storage factor of (k+m)/k instead of replication's m+1."""

    name = "erasure"
    aliases = ("erasure-coding", "reed-solomon")
    description = ("Each new chunk split into k+m Reed-Solomon shards on k+m providers "
                   "([enigma.erasure])")
    options_table = "erasure"

    def __init__(self, providers: Sequence[ProviderSlot], data_shards: int = 2,
                 parity_shards: int = 1) -> None:
        from enigma.erasure import MAX_SHARDS

        super().__init__(providers)
        k = _count("data_shards", data_shards)
        m = _count("parity_shards", parity_shards)
        if k + m > MAX_SHARDS:
            raise ConfigError(f"'data_shards' + 'parity_shards' = {k + m} exceeds the "
                              f"{MAX_SHARDS} shards Reed-Solomon over GF(256) allows")
        _enough_providers("'data_shards' + 'parity_shards'", k + m, len(self.providers))
        self.redundancy = Redundancy(data_shards=k, parity_shards=m)
        self._rotation = _Rotation([slot.label for slot in self.providers], k + m)

    def choose(self, chunk_id: bytes, size: int) -> list[str]:
        """k+m labels in shard order: shard i goes to the i-th."""
        return self._rotation.take()


DISTRIBUTION_POLICIES = [RoundRobin, Weighted, Replicate, Erasure]
