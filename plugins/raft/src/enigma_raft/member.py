"""Joining the cluster: a voting member in ``enigma serve``, a reader in CLI commands."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from enigma.errors import ConfigError, UnavailableError
from enigma.manifest import Manifest
from enigma_raft.config import RaftOptions, parse_raft
from enigma_raft.node import ManifestNode, reset_state, sync_conf
from enigma_raft.replicated import ReplicatedManifest
from enigma_raft.snapshot import SnapshotFile

log = logging.getLogger("enigma_raft")


def options_of(repository: Any) -> RaftOptions:
    config = repository.config
    table = config.raw.get("raft")
    if not isinstance(table, dict):
        raise ConfigError(f"{config.where('raft')}: must be a table")
    return parse_raft(table, lambda key: config.where("raft", key), repository.reveal,
                      config.resolve)


def check_shared_storage(config: Any) -> None:
    """Refuse node-local directories: the other nodes could not read their chunks."""
    for entry in config.providers:
        if entry.type.lower() != "local" or entry.options.get("shared") is True:
            continue
        where = (config.where("providers", "path", entry.index) if entry.index >= 0 else
                 f"{config.path or config.config_dir} (no [[providers]]: local storage "
                 f"under {entry.options['path']})")
        raise ConfigError(
            f"{where}: a Raft cluster cannot use node-local storage ({entry.name!r}): "
            "every node must reach every chunk. Use a shared backend (S3, Azure, GCS), or, "
            "if this path is a mount all nodes share (NFS, a shared volume), say so in its "
            "[[providers]] table with: shared = true")


def join(manifest: Manifest, repository: Any) -> ReplicatedManifest:
    """The replicated manifest for this process; ``manifest`` (the single-node one) is
    closed and left untouched: the cluster's copy lives in ``data_dir``."""
    options = options_of(repository)
    check_shared_storage(repository.config)
    manifest.close()
    if repository.serving:
        return _member(options)
    return _reader(options)


def _member(options: RaftOptions) -> ReplicatedManifest:
    local = Manifest(reset_state(options.data_dir))
    snapshot = SnapshotFile(local)
    node = ManifestNode(local, options.addr, [p.addr for p in options.peers],
                        sync_conf(options, snapshot))
    print(f"enigma: Raft node {options.node_id} on {options.addr} "
          f"({len(options.peers)} peers, data in {options.data_dir})", file=sys.stderr,
          flush=True)
    return ReplicatedManifest(local, node, options.commit_timeout)


#: How long a CLI command waits to receive the cluster's manifest once a leader answers.
READER_TIMEOUT = 300.0


def _reader(options: RaftOptions) -> ReplicatedManifest:
    """A non-voting member for one command: it receives the whole manifest (snapshot and
    log tail) into a temporary directory, reads locally, and sends its writes to the
    leader like any member."""
    scratch = Path(tempfile.mkdtemp(prefix="enigma-raft-reader-"))
    local = Manifest(scratch / "manifest.db")
    snapshot = SnapshotFile(local)
    reader_options = dataclasses.replace(options, data_dir=scratch)
    conf = sync_conf(reader_options, snapshot)
    conf.journalFile = None  # a reader keeps nothing across runs
    node = ManifestNode(local, None, [options.addr, *(p.addr for p in options.peers)], conf)
    manifest = _TemporaryReplica(local, node, options.commit_timeout, scratch)
    try:
        wait = max(options.commit_timeout, 3 * options.election_timeout)
        _wait(lambda: node._getLeader() is not None, wait,
              f"no Raft leader reachable through {options.addr} or its peers within "
              f"{wait:g} s (is a majority of the cluster up? see: enigma raft status)")
        _wait(node.isReady, READER_TIMEOUT,
              f"the cluster's manifest did not arrive within {READER_TIMEOUT:g} s")
        manifest.read_barrier()
    except BaseException:
        manifest.close()
        raise
    return manifest


def _wait(done: Callable[[], bool], seconds: float, failure: str) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            raise UnavailableError(failure)
        time.sleep(0.02)


class _TemporaryReplica(ReplicatedManifest):
    def __init__(self, local: Manifest, node: ManifestNode, timeout: float,
                 scratch: Path) -> None:
        super().__init__(local, node, timeout)
        self.scratch = scratch

    def close(self) -> None:
        try:
            super().close()
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)
