"""Which provider stores each new chunk: plain rotation, or rotation in proportion to weight.

Both are deterministic and keep their position under a lock, because the upload pipeline
asks from many threads at once. Each returns one provider per chunk (no replication).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from enigma.errors import ConfigError
from enigma.interfaces import DistributionPolicy, ProviderSlot

__all__ = ["DISTRIBUTION_POLICIES", "RoundRobin", "Weighted"]


class RoundRobin(DistributionPolicy):
    """Providers in configured order, one chunk each, ignoring weights."""

    name = "round-robin"
    aliases = ("roundrobin",)
    description = "Each new chunk goes to the next provider in turn"

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


DISTRIBUTION_POLICIES = [RoundRobin, Weighted]
