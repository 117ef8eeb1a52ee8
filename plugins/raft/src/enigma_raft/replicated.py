"""``ReplicatedManifest``: the manifest as the core sees it when the cluster holds it.

Writes: every name in ``Manifest.MUTATING_OPERATIONS`` becomes one Raft entry, sent to the
leader from whichever node received it, and returns once it is committed and applied to
this node's copy (pysyncobj calls back only then), so a node always reads its own writes.

Reads: ``read_barrier`` commits a no-op through the leader and waits until this node has
applied it. Raft commits entries in log order, so once the barrier is applied here every
write acknowledged before the barrier started, by any node, is applied here too: the read
is linearizable. A barrier costs one commit round, and concurrent requests share one:
each waits for the first barrier that *started* after it arrived. Without a quorum the
barrier times out and the read fails (S3 503) rather than answer from a stale copy.
"""

from __future__ import annotations

import threading
from typing import Any

from enigma.manifest import Manifest
from enigma_raft.node import BARRIER, ManifestNode


class ReadBarrier:
    """Coalesces concurrent barrier waits into as few commits as correctness allows."""

    def __init__(self, node: ManifestNode, timeout: float) -> None:
        self.node = node
        self.timeout = timeout
        self._cond = threading.Condition()
        self._started = 0  # generations of barriers sent
        self._finished = 0  # the latest generation done
        self._running = False
        self._errors: dict[int, BaseException] = {}
        self.rounds = 0  # commits made (tests read it)

    def wait(self) -> None:
        with self._cond:
            target = self._started + 1  # the first barrier to start from now on
            while self._finished < target:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                self._started += 1
                generation = self._started
                self._cond.release()
                error: BaseException | None = None
                try:
                    self.node.commit(BARRIER, [], {}, self.timeout)
                except BaseException as exc:
                    error = exc
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._finished = generation
                    self.rounds += 1
                    if error is not None:
                        self._errors[generation] = error
                    self._errors.pop(generation - 8, None)  # nobody waits that long
                    self._cond.notify_all()
            failure = self._errors.get(target)
        if failure is not None:
            raise failure


class ReplicatedManifest:
    """Reads from this node's copy; writes through Raft (see the module docstring)."""

    replicated = True

    def __init__(self, local: Manifest, node: ManifestNode, commit_timeout: float) -> None:
        self.local = local
        self.node = node
        self.commit_timeout = commit_timeout
        self.barrier = ReadBarrier(node, commit_timeout)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this class lacks: the reads and the plumbing.
        return getattr(self.local, name)

    def __repr__(self) -> str:
        return f"ReplicatedManifest({self.local.path!r})"

    def apply(self, op: str, *args: Any, **kwargs: Any) -> Any:
        if op not in Manifest.MUTATING_OPERATIONS:
            raise ValueError(f"unknown manifest operation {op!r}")
        return self.node.commit(op, list(args), kwargs, self.commit_timeout)

    def read_barrier(self) -> None:
        self.barrier.wait()

    def is_leader(self) -> bool:
        return bool(self.node._isLeader())

    def cluster_status(self) -> dict[str, Any]:
        return self.node.status()

    def close(self) -> None:
        """Leave the cluster's traffic first, then close the local copy."""
        self.node.destroy_synchronous()
        self.local.close()

    def __enter__(self) -> ReplicatedManifest:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _forward(name: str) -> Any:
    def operation(self: ReplicatedManifest, *args: Any, **kwargs: Any) -> Any:
        return self.node.commit(name, list(args), kwargs, self.commit_timeout)

    operation.__name__ = name
    operation.__doc__ = f"``Manifest.{name}``, committed through Raft."
    return operation


for _name in Manifest.MUTATING_OPERATIONS:
    setattr(ReplicatedManifest, _name, _forward(_name))
