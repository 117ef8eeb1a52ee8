"""``enigma raft status | add-node | remove-node --json`` against a real cluster match the
schemas in docs/json.md (tests/test_json_schema.py checks every other command)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_support import Cluster, wait_for
from helpers import Enigma

pytest.importorskip("jsonschema")
from test_json_schema import validate


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster.create(tmp_path, size=1)
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.stop_all()


def raft_json(cli: Enigma, *args: str) -> dict:
    value = json.loads(cli.ok("raft", *args, "--json").out)
    validate(("raft", args[0]), value)
    return value


def test_raft_commands_print_the_documented_json(cluster: Cluster) -> None:
    first = cluster.nodes[0]
    cli = Enigma(first.config_dir)
    alone = raft_json(cli, "status")
    assert alone["role"] == "leader" and alone["node"] == "n1", alone
    assert [p["id"] for p in alone["peers"]] == ["n1"], alone

    second = cluster.add_node()
    cluster.configure(first)  # the operator lists the new member, then adds it
    cluster.start(second)
    added = raft_json(cli, "add-node", second.raft_addr)
    assert added == {"action": "added", "address": second.raft_addr, "node": "n2"}
    wait_for(lambda: second.status()["last_applied"] >= first.status()["commit_idx"], 20,
             "the new node to catch up")
    both = raft_json(cli, "status")
    assert {p["id"]: p["state"] for p in both["peers"]} == {"n1": "leader", "n2": "connected"}

    removed = raft_json(cli, "remove-node", second.raft_addr)
    assert removed["action"] == "removed" and removed["node"] == "n2"
