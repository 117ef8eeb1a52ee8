"""Raft traffic is encrypted and authenticated: a peer without the secret gets nothing in,
least of all a pickle (pysyncobj's wire format), and nothing out."""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import struct
import time
import zlib
from pathlib import Path

import pytest
from cluster_support import Cluster
from helpers import Enigma, assert_clean_error
from pysyncobj.encryptor import getEncryptor
from pysyncobj.utility import TcpUtility, UtilityException


class Exploit:
    """Unpickling this creates ``marker``: what an attacker would send."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.mkdir, (str(self.marker),))


def frame(payload: bytes) -> bytes:
    return struct.pack("i", len(payload)) + payload


@pytest.fixture
def node(tmp_path: Path):
    cluster = Cluster.create(tmp_path, size=1)
    cluster.start_all()
    try:
        yield cluster.nodes[0]
    finally:
        cluster.stop_all()


def test_unauthenticated_pickles_are_never_loaded(node, tmp_path: Path) -> None:
    plain, wrong_key = tmp_path / "pwned-plain", tmp_path / "pwned-wrong-key"
    attacks = [
        frame(zlib.compress(pickle.dumps(Exploit(plain)), 3)),  # no encryption at all
        frame(getEncryptor("not the cluster secret, but long")
              .encrypt_at_time(zlib.compress(pickle.dumps(Exploit(wrong_key)), 3),
                               int(time.monotonic()))),  # a valid token, wrong key
    ]
    for attack in attacks:
        with socket.create_connection(("127.0.0.1", node.raft_port), timeout=5) as sock:
            sock.sendall(attack)
            sock.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1) == b"", "the node answered an unauthenticated peer"
    time.sleep(0.5)
    assert not plain.exists() and not wrong_key.exists(), "a pickle from outside was loaded"
    client = node.client()  # still serving, still committing
    client.create_bucket(Bucket="still-alive")
    assert client.head_bucket(Bucket="still-alive")["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_admin_questions_need_the_secret(node) -> None:
    assert node.status()["state"] == 2  # with the secret: the leader of a one-node cluster
    with pytest.raises(UtilityException):
        TcpUtility("a wrong secret of enough length", 3.0).executeCommand(
            node.raft_addr, ["status"])
    with pytest.raises(UtilityException):
        TcpUtility(None, 3.0).executeCommand(node.raft_addr, ["status"])


def test_wrong_secret_is_a_clean_cli_error(node) -> None:
    config = node.config_dir / "enigma.toml"
    text = config.read_text()
    start = text.index('secret = "enc:', text.index("[raft]"))
    end = text.index("\n", start)
    config.write_text(text[:start] + 'secret = "a wrong secret of enough length"' + text[end:])
    result = Enigma(node.config_dir)("raft", "status")
    assert_clean_error(result, "status failed")


def test_node_local_storage_is_refused(tmp_path: Path) -> None:
    runner = Enigma(tmp_path / "config")
    runner.ok("init")
    config = tmp_path / "config" / "enigma.toml"
    config.write_text(config.read_text() + '\n[s3_proxy]\naccess_key = "a"\nsecret_key = "b"\n'
                      '\n[raft]\nnode_id = "n1"\ngrpc_addr = "127.0.0.1:7000"\n')
    assert_clean_error(runner("serve"), "cannot use node-local storage", "shared = true")
    assert_clean_error(runner("list"), "cannot use node-local storage")
