"""``[raft]`` validation: every mistake is one line naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from enigma_raft.config import parse_raft

from enigma.errors import ConfigError

PEERS = [{"id": "a", "addr": "10.0.0.1:7000"}, {"id": "b", "addr": "10.0.0.2:7000"},
         {"id": "c", "addr": "10.0.0.3:7000"}]
SECRET = "0123456789abcdef0123"


def parse(**table: Any):
    return parse_raft(table, lambda key: f"[raft] {key}", lambda v: v.removeprefix("enc:"),
                      lambda p: Path("/etc/enigma") / p)


def test_peers_list_may_include_this_node() -> None:
    options = parse(node_id="b", peers=PEERS, secret=SECRET, election_timeout_ms=500,
                    heartbeat_interval_ms=50, snapshot_threshold=100)
    assert options.addr == "10.0.0.2:7000" and options.bind_addr == options.addr
    assert [p.id for p in options.peers] == ["a", "c"]
    assert options.data_dir == Path("/etc/enigma/raft-b")
    assert (options.election_timeout, options.heartbeat_interval) == (0.5, 0.05)
    assert options.name_of("10.0.0.3:7000") == "c"


def test_numeric_ids_as_in_the_seed_config() -> None:
    peers = [{"id": n, "addr": f"10.0.0.{n}:7000"} for n in (1, 2, 3)]
    options = parse(node_id=1, peers=peers, secret=SECRET)
    assert options.node_id == "1" and options.addr == "10.0.0.1:7000"
    assert [p.id for p in options.peers] == ["2", "3"]


def test_secret_may_be_an_enc_token_and_must_be_long() -> None:
    assert parse(node_id="a", peers=PEERS, secret="enc:" + SECRET).secret == SECRET
    with pytest.raises(ConfigError, match=r"\[raft\] secret: too short"):
        parse(node_id="a", peers=PEERS, secret="short")


def test_secret_is_required_unless_everything_is_loopback() -> None:
    with pytest.raises(ConfigError, match=r"\[raft\] secret: required when any Raft address"):
        parse(node_id="a", peers=PEERS)
    local = [{"id": "a", "addr": "127.0.0.1:7000"}, {"id": "b", "addr": "localhost:7001"},
             {"id": "c", "addr": "[::1]:7002"}]
    assert parse(node_id="a", peers=local).secret is None
    with pytest.raises(ConfigError, match="secret: required"):
        parse(node_id="a", peers=local, bind_addr="0.0.0.0:7000")


@pytest.mark.parametrize(("table", "message"), [
    ({"peers": PEERS}, "node_id: required"),
    ({"node_id": "z", "peers": PEERS, "secret": SECRET}, "grpc_addr: required"),
    ({"node_id": "a", "peers": PEERS, "secret": SECRET, "grpc_addr": "10.0.0.9:7000"},
     "differs from the address"),
    ({"node_id": "a", "grpc_addr": "nohost", "secret": SECRET}, "grpc_addr: must be HOST:PORT"),
    ({"node_id": "a", "peers": [*PEERS, {"id": "a", "addr": "10.0.0.5:7000"}],
      "secret": SECRET}, "listed twice"),
    ({"node_id": "a", "peers": [{"id": "b"}], "grpc_addr": "10.0.0.1:1", "secret": SECRET},
     "needs id and addr"),
    ({"node_id": True, "peers": PEERS, "secret": SECRET}, "node_id: required, a name"),
    ({"node_id": "a", "peers": PEERS, "secret": SECRET, "heartbeat_interval_ms": 400},
     "less than a third of election_timeout_ms"),
    ({"node_id": "a", "peers": PEERS, "secret": SECRET, "snapshot_threshold": 1},
     "at least 2"),
    ({"node_id": "a", "peers": PEERS, "secret": SECRET, "election_timeout_ms": "fast"},
     "positive number"),
    ({"node_id": "a", "peers": PEERS, "secret": SECRET, "grpc": "x"}, "unknown key"),
])
def test_mistakes_name_the_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(**table)


def test_the_deploy_placeholder_secret_is_refused() -> None:
    with pytest.raises(ConfigError, match="placeholder"):
        parse(node_id="a", peers=PEERS, secret="CHANGE-ME-raft-cluster-secret")
