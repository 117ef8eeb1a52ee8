"""The ``[raft]`` table: who this node is, who its peers are, timers, the cluster secret.

Every node may carry the same ``[[raft.peers]]`` list (a Kubernetes ConfigMap, one compose
file): the entry whose ``id`` is this ``node_id`` is this node, the others are its peers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enigma.errors import ConfigError

#: Every key ``[raft]`` accepts (``grpc_addr`` keeps the seed's name for this node's Raft
#: address; nothing speaks gRPC).
KNOWN = ("node_id", "data_dir", "grpc_addr", "bind_addr", "election_timeout_ms",
         "heartbeat_interval_ms", "snapshot_threshold", "commit_timeout_ms", "secret",
         "peers")
PEER_KEYS = ("id", "addr")
DEFAULT_ELECTION_TIMEOUT_MS = 1000
DEFAULT_HEARTBEAT_MS = 100
DEFAULT_SNAPSHOT_THRESHOLD = 10000
DEFAULT_COMMIT_TIMEOUT_MS = 5000
#: Marks the example values in deploy/: a cluster must never run with a published secret.
PLACEHOLDER = "CHANGE-ME"
#: The smallest secret accepted: it keys the transport's encryption and authentication.
MIN_SECRET_LENGTH = 16

#: Raft states as pysyncobj numbers them (here, not in ``node``: ``enigma raft status``
#: names them without importing pysyncobj, and so does every command's start-up).
ROLES = {0: "follower", 1: "candidate", 2: "leader"}


@dataclass(frozen=True)
class Peer:
    id: str
    addr: str


@dataclass(frozen=True)
class RaftOptions:
    node_id: str
    data_dir: Path
    addr: str  # this node's Raft address as its peers dial it ("host:port")
    bind_addr: str  # where it listens (defaults to ``addr``)
    peers: tuple[Peer, ...]  # the other voting members
    election_timeout: float  # seconds; a follower waits 1-2x this before standing
    heartbeat_interval: float  # seconds between the leader's append-entries
    snapshot_threshold: int  # log entries between compactions
    commit_timeout: float  # seconds a write waits for a commit before 503
    secret: str | None  # revealed; None only when every address is loopback

    @property
    def all_addresses(self) -> list[str]:
        return [self.addr, self.bind_addr, *(p.addr for p in self.peers)]

    def name_of(self, addr: str) -> str:
        """The configured id of the member at ``addr`` (the address when unknown)."""
        if addr == self.addr:
            return self.node_id
        return next((p.id for p in self.peers if p.addr == addr), addr)


def parse_raft(options: dict[str, Any], where: Callable[[str | None], str],
               reveal: Callable[[Any], Any], resolve: Callable[[str], Path] = Path
               ) -> RaftOptions:
    """Validate ``[raft]``; ``where(key)`` locates a key for messages, ``reveal`` decrypts
    an ``enc:`` secret, ``resolve`` makes ``data_dir`` absolute against the config dir."""
    for key in options:
        if key not in KNOWN:
            raise ConfigError(f"{where(key)}: unknown key (known: {', '.join(KNOWN)})")
    node_id = _identifier(options.get("node_id"), lambda: where("node_id"))
    data_dir = resolve(_string(options, "data_dir", where, default=f"raft-{node_id}"))
    peers, own_addr = _peers(options.get("peers", []), node_id, where)
    addr = _string(options, "grpc_addr", where, default=own_addr or "")
    if not addr:
        raise ConfigError(f"{where('grpc_addr')}: required (this node's Raft address, "
                          f"HOST:PORT), or list node {node_id!r} in [[raft.peers]]")
    _address(addr, lambda: where("grpc_addr"))
    if own_addr and own_addr != addr:
        raise ConfigError(f"{where('grpc_addr')}: {addr!r} differs from the address "
                          f"[[raft.peers]] gives node {node_id!r} ({own_addr!r})")
    bind = _string(options, "bind_addr", where, default=addr)
    _address(bind, lambda: where("bind_addr"))
    if any(p.addr == addr for p in peers):
        raise ConfigError(f"{where('peers')}: another peer has this node's address {addr!r}")
    election = _number(options, "election_timeout_ms", DEFAULT_ELECTION_TIMEOUT_MS, where) / 1e3
    heartbeat = _number(options, "heartbeat_interval_ms", DEFAULT_HEARTBEAT_MS, where) / 1e3
    if heartbeat * 3 >= election:
        raise ConfigError(f"{where('heartbeat_interval_ms')}: must be less than a third of "
                          "election_timeout_ms (followers would stand for election between "
                          "heartbeats)")
    threshold = int(_number(options, "snapshot_threshold", DEFAULT_SNAPSHOT_THRESHOLD, where))
    if threshold < 2:
        raise ConfigError(f"{where('snapshot_threshold')}: must be at least 2")
    commit = _number(options, "commit_timeout_ms", DEFAULT_COMMIT_TIMEOUT_MS, where) / 1e3
    secret = options.get("secret")
    if secret is not None:
        if not isinstance(secret, str) or not secret:
            raise ConfigError(f"{where('secret')}: must be a non-empty string")
        secret = reveal(secret)
        if PLACEHOLDER in secret:
            raise ConfigError(f"{where('secret')}: still the example's placeholder: set the "
                              "cluster's own secret (e.g. `openssl rand -base64 32`)")
        if len(secret) < MIN_SECRET_LENGTH:
            raise ConfigError(f"{where('secret')}: too short (at least {MIN_SECRET_LENGTH} "
                              "characters; e.g. `openssl rand -base64 32`)")
    result = RaftOptions(node_id, data_dir, addr, bind, peers, election, heartbeat,
                         threshold, commit, secret)
    if secret is None and not all(is_loopback(a) for a in result.all_addresses):
        # pysyncobj's wire format is pickle: an open port without the secret is remote
        # code execution for anyone who can reach it.
        raise ConfigError(f"{where('secret')}: required when any Raft address is not "
                          "loopback (Raft traffic is encrypted and authenticated with it; "
                          "encrypt it with: enigma encrypt-cred)")
    return result


def is_loopback(addr: str) -> bool:
    host = addr.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _peers(value: Any, node_id: str, where: Callable[[str | None], str]
           ) -> tuple[tuple[Peer, ...], str | None]:
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ConfigError(f"{where('peers')}: must be an array of tables "
                          "([[raft.peers]] with id and addr)")
    peers: list[Peer] = []
    own: str | None = None
    seen: set[str] = set()
    for number, table in enumerate(value, 1):
        unknown = sorted(set(table) - set(PEER_KEYS))
        if unknown:
            raise ConfigError(f"{where('peers')} #{number}: unknown key '{unknown[0]}' "
                              "(known: id, addr)")
        addr = table.get("addr")
        if "id" not in table or not isinstance(addr, str):
            raise ConfigError(f"{where('peers')} #{number}: needs id and addr")
        peer_id = _identifier(table["id"], lambda n=number: f"{where('peers')} #{n} id")
        _address(addr, lambda n=number: f"{where('peers')} #{n}")
        if peer_id in seen:
            raise ConfigError(f"{where('peers')} #{number}: id {peer_id!r} listed twice")
        seen.add(peer_id)
        if peer_id == node_id:
            own = addr
        else:
            peers.append(Peer(peer_id, addr))
    if len({p.addr for p in peers}) != len(peers):
        raise ConfigError(f"{where('peers')}: two peers share an address")
    return tuple(peers), own


def _identifier(value: Any, where: Callable[[], str]) -> str:
    """A node id: a non-empty string, or an integer as the seed's configs have them."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where()}: required, a name or a number")
    return value


def _string(options: dict[str, Any], key: str, where: Callable[[str | None], str], *,
            default: str = "") -> str:
    value = options.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"{where(key)}: must be a string")
    return value


def _number(options: dict[str, Any], key: str, default: int,
            where: Callable[[str | None], str]) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{where(key)}: must be a positive number")
    return float(value)


def _address(value: str, where: Callable[[], str]) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where()}: must be HOST:PORT, e.g. 10.0.0.1:7000")
