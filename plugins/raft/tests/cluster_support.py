"""A real cluster for tests: ``enigma serve`` processes on loopback sharing one repository.

One ``enigma init`` makes the keystore; every node gets a copy of it and its own config:
the same shared storage directory (declared ``shared = true``), its own S3 port, Raft port
and ``data_dir``, and the same ``[[raft.peers]]`` list. Nodes are asked about their Raft
state through pysyncobj's admin protocol (what ``enigma raft status`` uses).
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import ENIGMA, PASSPHRASE, Enigma
from servers import ServerProcess, free_port, wait_until

ACCESS_KEY = "RAFTTESTACCESSKEY"
SECRET_KEY = "raft/test+secret/key/0123456789"
CLUSTER_SECRET = "a cluster secret for the tests, 32+ chars"


@dataclass
class Node:
    name: str
    root: Path
    s3_port: int
    raft_port: int
    process: ServerProcess | None = None
    metrics_port: int = field(default_factory=free_port)

    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    @property
    def raft_addr(self) -> str:
        return f"127.0.0.1:{self.raft_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def log(self) -> Path:
        return self.root / "serve.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def client(self, **config: Any) -> Any:
        import boto3
        from botocore.config import Config

        options = {"retries": {"max_attempts": 1}, "connect_timeout": 5,
                   "read_timeout": 30, **config}
        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}, **options))

    def status(self) -> dict[str, Any]:
        from pysyncobj.utility import TcpUtility

        return TcpUtility(CLUSTER_SECRET, 5.0).executeCommand(self.raft_addr, ["status"])

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """This node's Prometheus samples: (name, sorted labels) -> value."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as response:
            text = response.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def manifest_digest(self) -> str:
        """A checksum of the content of this node's manifest copy (every table, sorted)."""
        conn = sqlite3.connect(f"file:{self.root / 'raft' / 'manifest.db'}?mode=ro", uri=True)
        try:
            digest = hashlib.sha256()
            tables = [r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
            for table in tables:
                digest.update(table.encode())
                for row in sorted(conn.execute(f'SELECT * FROM "{table}"'), key=repr):
                    digest.update(repr(row).encode())
            return digest.hexdigest()
        finally:
            conn.close()


@dataclass
class Cluster:
    root: Path
    nodes: list[Node] = field(default_factory=list)
    raft_extra: str = ""
    secret_token: str = ""  # the S3 secret key as an enc: token of this repository
    cluster_token: str = ""  # the cluster secret, likewise

    @classmethod
    def create(cls, root: Path, size: int = 3, raft_extra: str = "") -> Cluster:
        cluster = cls(root, raft_extra=raft_extra)
        (root / "storage").mkdir(parents=True)
        for number in range(1, size + 1):
            cluster.nodes.append(Node(f"n{number}", root / f"n{number}", free_port(),
                                      free_port()))
        first = cluster.nodes[0]
        first.config_dir.mkdir(parents=True)
        (first.config_dir / "enigma.toml").write_text(cluster._base_config())
        runner = Enigma(first.config_dir)
        runner.ok("init")
        cluster.secret_token = runner.ok("encrypt-cred", SECRET_KEY).out.strip()
        cluster.cluster_token = runner.ok("encrypt-cred", CLUSTER_SECRET).out.strip()
        for node in cluster.nodes:
            cluster.configure(node)
        return cluster

    def _base_config(self) -> str:
        return ('[enigma]\nkey_provider = "local"\n\n[[providers]]\nname = "shared"\n'
                f'type = "local"\npath = "{self.root / "storage"}"\nshared = true\n')

    def configure(self, node: Node, members: list[Node] | None = None) -> None:
        """Write ``node``'s config: the shared repository, its ports, the peer list."""
        first = self.nodes[0]
        node.config_dir.mkdir(parents=True, exist_ok=True)
        if node is not first:
            shutil.copy2(first.config_dir / "keystore.enc", node.config_dir / "keystore.enc")
        peers = "".join(f'\n[[raft.peers]]\nid = "{m.name}"\naddr = "{m.raft_addr}"\n'
                        for m in (members or self.nodes))
        (node.config_dir / "enigma.toml").write_text(
            self._base_config()
            + f'\n[s3_proxy]\nlisten_addr = "127.0.0.1:{node.s3_port}"\n'
              f'access_key = "{ACCESS_KEY}"\nsecret_key = "{self.secret_token}"\n'
              f'multipart_expiry = 0\nmetrics_addr = "127.0.0.1:{node.metrics_port}"\n'
            + f'\n[raft]\nnode_id = "{node.name}"\ndata_dir = "{node.root / "raft"}"\n'
              f'secret = "{self.cluster_token}"\n{self.raft_extra}' + peers)

    def add_node(self) -> Node:
        node = Node(f"n{len(self.nodes) + 1}", self.root / f"n{len(self.nodes) + 1}",
                    free_port(), free_port())
        self.nodes.append(node)
        self.configure(node)
        return node

    def start(self, node: Node) -> None:
        node.process = ServerProcess(
            [ENIGMA, "--config-dir", str(node.config_dir), "serve"], node.log,
            env={"ENIGMA_PASSPHRASE": PASSPHRASE, "ENIGMA_RETRY_SECONDS": "3"})
        proc = node.process.start()
        wait_until(lambda: _port_open(node.s3_port), timeout=30, what=f"node {node.name}",
                   process=proc, log=node.log)

    def start_all(self) -> None:
        for node in self.nodes:
            self.start(node)
        self.wait_for_leader()

    def stop_all(self) -> None:
        for node in self.nodes:
            if node.process is not None:
                node.process.stop()

    def running(self) -> list[Node]:
        return [n for n in self.nodes if n.running]

    def leader(self) -> Node | None:
        """The node the running nodes agree leads, if they all agree."""
        leaders = set()
        for node in self.running():
            try:
                leader = node.status().get("leader")
            except Exception:
                return None
            leaders.add(str(leader) if leader is not None else None)
        if len(leaders) != 1 or None in leaders:
            return None
        (addr,) = leaders
        return next((n for n in self.nodes if n.raft_addr == addr and n.running), None)

    def wait_for_leader(self, timeout: float = 15.0) -> Node:
        found: list[Node] = []

        def ready() -> bool:
            leader = self.leader()
            if leader is not None:
                found.append(leader)
            return leader is not None

        wait_until(ready, timeout=timeout, what="a Raft leader")
        return found[-1]

    def wait_until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        wait_until(check, timeout=timeout, what=what)


def _port_open(port: int) -> bool:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check``; return the seconds it took."""
    start = time.monotonic()
    wait_until(check, timeout=timeout, what=what)
    return time.monotonic() - start
