"""One Raft member whose state machine is the SQLite manifest (a pysyncobj ``SyncObj``).

A log entry is ``(operation name, args, kwargs)`` of ``Manifest.MUTATING_OPERATIONS``; every
member applies the entries in log order to its own manifest, and the values in them
(ids, timestamps) were decided before the entry was written, so every copy ends up the
same. The one extra entry is the read barrier, a no-op (see ``ReplicatedManifest``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pysyncobj.syncobj
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.journal import FileJournal, createJournal

from enigma.errors import EnigmaError, UnavailableError
from enigma.manifest import Manifest
from enigma_raft.config import ROLES, RaftOptions
from enigma_raft.snapshot import SnapshotFile

log = logging.getLogger("enigma_raft")

#: The no-op whose commit proves that everything before it is applied here.
BARRIER = "barrier"
#: Failures after which the command is certainly not in the log: safe to send again.
_RETRYABLE = {FAIL_REASON.MISSING_LEADER, FAIL_REASON.NOT_LEADER, FAIL_REASON.DISCARDED,
              FAIL_REASON.QUEUE_FULL}
#: pysyncobj sends a log entry larger than this in pieces; its piecing has an off-by-a-few
#: bytes edge, so entries (one batch of manifest operations each) stay whole below it.
MAX_MESSAGE = 64 * 1024 * 1024
#: How long to wait between two looks for a leader.
_POLL = 0.01


def sync_conf(options: RaftOptions, snapshot: SnapshotFile | None, **extra: Any) -> SyncObjConf:
    """pysyncobj settings from ``[raft]``, tuned for small synchronous commits."""
    election = options.election_timeout
    data = options.data_dir
    files: dict[str, Any] = {}
    if snapshot is not None:
        files = {"journalFile": str(data / "journal"), "fullDumpFile": str(data / "snapshot"),
                 "serializer": snapshot.serialize, "deserializer": snapshot.deserialize}
    return SyncObjConf(
        password=options.secret,
        # Send each command at once instead of on the next 50 ms tick: the manifest
        # batches its own writes (group commit), so entries are already few and large.
        appendEntriesUseBatch=False,
        raftMinTimeout=election,
        raftMaxTimeout=2 * election,
        appendEntriesPeriod=options.heartbeat_interval,
        connectionTimeout=max(3.5, 2 * election),
        connectionRetryTime=min(0.5, election),
        # A leader that hears from no majority steps down soon, so a cut-off node answers
        # 503 instead of queueing writes it can never commit.
        leaderFallbackTimeout=2 * election,
        logCompactionMinEntries=options.snapshot_threshold,
        logCompactionMinTime=10**9,  # compact by entries only, never on a timer
        appendEntriesBatchSizeBytes=MAX_MESSAGE,
        commandsWaitLeader=False,
        dynamicMembershipChange=True,
        bindAddress=options.bind_addr,
        **files,
        **extra,
    )


class ManifestNode(SyncObj):
    """A cluster member (or, with ``addr=None``, a non-voting reader) over ``manifest``."""

    def __init__(self, manifest: Manifest, addr: str | None, peers: list[str],
                 conf: SyncObjConf) -> None:
        self.manifest = manifest
        # pysyncobj has no journal option: SyncObj.__init__ calls its module's
        # createJournal, so that name points at the durable one while it runs.
        with _JOURNAL_SWAP:
            pysyncobj.syncobj.createJournal = _durable_journal
            try:
                super().__init__(addr, peers, conf)
            finally:
                pysyncobj.syncobj.createJournal = createJournal

    @replicated
    def apply_operation(self, op: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Apply one committed entry; an operation's own refusal is its result, not a crash.

        Any other exception (disk full, I/O) escapes: pysyncobj then retries this same
        entry on its next tick instead of skipping it, as a state machine must.
        """
        if op == BARRIER:
            return True, None
        try:
            return True, self.manifest.apply(op, *args, **kwargs)
        except EnigmaError as exc:
            return False, exc

    def commit(self, op: str, args: list[Any], kwargs: dict[str, Any],
               timeout: float) -> Any:
        """Commit one operation through the leader and return its result, as applied here.

        Raises ``UnavailableError`` when nothing could be committed within ``timeout``
        (no leader, no quorum) or when the outcome is unknown (the leader changed while
        the entry was in flight): then it may or may not apply later, like an S3 503.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self._getLeader() is None:
                if time.monotonic() >= deadline:
                    raise UnavailableError(
                        f"no Raft leader within {timeout:g} s (is a majority of the "
                        "cluster up? see: enigma raft status)")
                time.sleep(_POLL)
                continue
            done = threading.Event()
            outcome: list[Any] = []

            def finished(result: Any, error: int, done: threading.Event = done,
                         outcome: list[Any] = outcome) -> None:
                outcome[:] = [result, error]
                done.set()

            self.apply_operation(op, args, kwargs, callback=finished)
            if not done.wait(max(deadline - time.monotonic(), 0.0)):
                raise UnavailableError(
                    f"manifest change not committed within {timeout:g} s (quorum lost?); "
                    "it may still apply later: retry")
            result, error = outcome
            if error == FAIL_REASON.SUCCESS:
                ok, value = result
                if not ok:
                    raise value
                return value
            # A barrier is a no-op, so sending it twice is harmless whatever happened.
            if (error in _RETRYABLE or op == BARRIER) and time.monotonic() < deadline:
                time.sleep(_POLL)
                continue
            raise UnavailableError(f"manifest change interrupted ({_reason(error)}); "
                                   "it may or may not have applied: retry")

    def status(self) -> dict[str, Any]:
        """Role, term, indexes and leader, from this node's point of view."""
        raw = self.getStatus()
        leader = raw.get("leader")
        prefix = "match_idx_server_"
        return {
            "role": ROLES.get(raw.get("state", 0), str(raw.get("state"))),
            "term": raw.get("raft_term"),
            "commit_index": raw.get("commit_idx"),
            "last_applied": raw.get("last_applied"),
            "leader": str(leader) if leader is not None else None,
            "has_quorum": raw.get("has_quorum"),
            # The leader's view of each peer's replicated log (empty on followers).
            "peers_match_index": {key[len(prefix):]: value for key, value in raw.items()
                                  if key.startswith(prefix)},
        }


class DurableJournal(FileJournal):
    """pysyncobj's file journal, made durable before Raft relies on it.

    The stock one writes entries into an ``mmap`` and the term/vote through a rename, and
    syncs neither: that survives a killed process but not a power cut, after which a
    member could have acknowledged entries or a vote it no longer has. An entry's
    ``msync`` costs ~0.1 ms here, and the gateway's group commit keeps entries few.
    """

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self._meta = path + ".meta"

    def add(self, command: bytes, idx: int, term: int) -> None:
        super().add(command, idx, term)
        self.flush()

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        super().deleteEntriesFrom(entryFrom)
        self.flush()

    def clear(self) -> None:
        super().clear()
        self.flush()

    def setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:
        super().setCurrentTerm(term, votedForNodeId)
        _fsync_path(self._meta)
        _fsync_path(os.path.dirname(os.path.abspath(self._meta)))


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _durable_journal(path: str | None) -> Any:
    return createJournal(None) if path is None else DurableJournal(path)


_JOURNAL_SWAP = threading.Lock()


#: pysyncobj's failure codes in words, for messages.
_REASONS = {value: name.lower().replace("_", " ") for name, value in vars(FAIL_REASON).items()
            if name.isupper()}


def _reason(error: int) -> str:
    return _REASONS.get(error, f"error {error}")


def reset_state(data_dir: Path) -> Path:
    """The node's manifest path, emptied: its content is rebuilt from snapshot plus log.

    Starting from an empty database every time makes recovery one path (load the last
    snapshot, replay the committed tail) with no risk of applying an entry twice.
    """
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / "manifest.db"
    for suffix in ("", "-wal", "-shm"):
        (data_dir / f"manifest.db{suffix}").unlink(missing_ok=True)
    return path
