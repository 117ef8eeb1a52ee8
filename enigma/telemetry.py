"""Process-wide counters of what the pipeline did: chunks written and deduplicated, their
plaintext and stored bytes, and storage errors and retries by provider.

One instance per process (``TELEMETRY``), like prometheus_client's default registry: the
pipeline and the retry loop count into it from any thread; ``enigma serve`` exports it as
Prometheus counters, and a CLI backup reports the difference between two snapshots. The
counting is one lock and a few additions per chunk or per failed call - nothing per byte.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

#: Kinds of backend error: retried (a timeout, a 503), given up on after retrying, final
#: at once (access denied, bad request). A missing object is not counted: it is an answer.
ERROR_KINDS = ("transient", "exhausted", "permanent")


@dataclass(frozen=True)
class TelemetrySnapshot:
    """The counters at one moment; subtract two to get what happened in between."""

    chunks_written: int = 0
    chunks_deduplicated: int = 0
    bytes_written_plain: int = 0  # plaintext of the chunks written
    bytes_written_stored: int = 0  # their sealed (compressed, encrypted) size, one copy
    bytes_deduplicated: int = 0  # plaintext not stored again because it already was
    #: (provider label, error kind) -> count
    backend_errors: dict[tuple[str, str], int] = field(default_factory=dict)
    #: provider label -> calls repeated after a transient error
    backend_retries: dict[str, int] = field(default_factory=dict)

    def __sub__(self, earlier: TelemetrySnapshot) -> TelemetrySnapshot:
        return TelemetrySnapshot(
            chunks_written=self.chunks_written - earlier.chunks_written,
            chunks_deduplicated=self.chunks_deduplicated - earlier.chunks_deduplicated,
            bytes_written_plain=self.bytes_written_plain - earlier.bytes_written_plain,
            bytes_written_stored=self.bytes_written_stored - earlier.bytes_written_stored,
            bytes_deduplicated=self.bytes_deduplicated - earlier.bytes_deduplicated,
            backend_errors=_minus(self.backend_errors, earlier.backend_errors),
            backend_retries=_minus(self.backend_retries, earlier.backend_retries))

    @property
    def compression_ratio(self) -> float | None:
        """Plaintext over stored bytes of the chunks written (>1: compression helped;
        slightly <1 for incompressible data: the seal's header and tag)."""
        if not self.bytes_written_stored:
            return None
        return self.bytes_written_plain / self.bytes_written_stored

    def errors_by_provider(self) -> dict[str, int]:
        totals: Counter[str] = Counter()
        for (provider, _kind), n in self.backend_errors.items():
            totals[provider] += n
        return dict(totals)


def _minus(later: dict, earlier: dict) -> dict:
    return {k: v - earlier.get(k, 0) for k, v in later.items() if v - earlier.get(k, 0)}


class Telemetry:
    """The live counters; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chunks_written = 0
        self._chunks_deduplicated = 0
        self._plain = 0
        self._stored = 0
        self._deduplicated = 0
        self._errors: Counter[tuple[str, str]] = Counter()
        self._retries: Counter[str] = Counter()

    def chunk_written(self, plain: int, stored: int) -> None:
        with self._lock:
            self._chunks_written += 1
            self._plain += plain
            self._stored += stored

    def chunk_deduplicated(self, plain: int) -> None:
        with self._lock:
            self._chunks_deduplicated += 1
            self._deduplicated += plain

    def backend_error(self, provider: str, kind: str) -> None:
        with self._lock:
            self._errors[provider, kind] += 1

    def backend_retry(self, provider: str) -> None:
        with self._lock:
            self._retries[provider] += 1

    def snapshot(self) -> TelemetrySnapshot:
        with self._lock:
            return TelemetrySnapshot(
                chunks_written=self._chunks_written,
                chunks_deduplicated=self._chunks_deduplicated,
                bytes_written_plain=self._plain, bytes_written_stored=self._stored,
                bytes_deduplicated=self._deduplicated, backend_errors=dict(self._errors),
                backend_retries=dict(self._retries))


TELEMETRY = Telemetry()
