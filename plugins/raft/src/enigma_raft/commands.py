"""``enigma raft status | add-node | remove-node``: ask a running node over the Raft port.

The questions travel as pysyncobj utility messages, encrypted and authenticated with the
cluster secret like all Raft traffic, so the CLI needs the config but not the keys (unless
the secret is an ``enc:`` token).
"""

from __future__ import annotations

from typing import Any

import click

from enigma.cli import echo_json, pass_state
from enigma.errors import UnavailableError
from enigma_raft.config import ROLES, RaftOptions

#: Seconds to wait for a node's answer.
ASK_TIMEOUT = 10.0


@click.group()
def raft() -> None:
    """Inspect and change a Raft cluster of `enigma serve` nodes ([raft] in enigma.toml).

    \b
    Examples:
      enigma raft status
      enigma raft add-node 10.0.0.4:7000
      enigma raft remove-node 10.0.0.4:7000
    """


@raft.command()
@click.option("--node", "address", metavar="HOST:PORT",
              help="Ask this node instead of the one [raft] configures.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@pass_state
def status(state: Any, address: str | None, as_json: bool) -> None:
    """Role, term, commit index, and each peer's state and lag (asked of the leader).

    \b
    Examples:
      enigma raft status
      enigma raft status --node 10.0.0.2:7000 --json
    """
    options = _options(state)
    address = address or options.addr
    mine = _ask(options, address, ["status"])
    leader = str(mine["leader"]) if mine.get("leader") is not None else None
    view = mine if leader in (None, address) else _ask(options, leader, ["status"])
    report = {
        "node": options.name_of(address), "address": address,
        "role": ROLES.get(mine["state"], str(mine["state"])), "term": mine["raft_term"],
        "commit_index": mine["commit_idx"], "last_applied": mine["last_applied"],
        "log_entries": mine["log_len"], "leader": leader and options.name_of(leader),
        "leader_address": leader, "has_quorum": mine["has_quorum"],
        "peers": _peers(options, view, leader),
    }
    if as_json:
        echo_json(report)
        return
    click.echo(f"node {report['node']} ({address}): {report['role']}, term {report['term']}, "
               f"commit index {report['commit_index']}, applied {report['last_applied']}, "
               f"{report['log_entries']} log entries")
    click.echo(f"leader: {report['leader'] or 'none (no quorum?)'}")
    for peer in report["peers"]:
        lag = "?" if peer["lag"] is None else peer["lag"]
        click.echo(f"  {peer['id']:<12} {peer['address']:<24} {peer['state']:<10} "
                   f"match {peer['match_index'] if peer['match_index'] is not None else '?'}"
                   f"  lag {lag}")


def _peers(options: RaftOptions, view: dict[str, Any], leader: str | None
           ) -> list[dict[str, Any]]:
    """Every member the leader (or, without one, the asked node) knows, with its lag."""
    members = sorted({key.rsplit("_server_", 1)[1] for key in view
                      if key.startswith("partner_node_status_server_")}
                     | ({str(view["self"])} if view.get("self") is not None else set()),
                     key=options.name_of)
    peers = []
    for addr in members:
        is_leader = addr == leader
        match = view.get(f"match_idx_server_{addr}")
        if is_leader:
            match = view.get("commit_idx")
        connected = view.get(f"partner_node_status_server_{addr}") == 2
        peers.append({
            "id": options.name_of(addr), "address": addr,
            "state": "leader" if is_leader else ("connected" if connected or
                                                  addr == str(view.get("self")) else "down"),
            "match_index": match,
            "lag": (view["commit_idx"] - match) if match is not None and leader else None,
        })
    return peers


@raft.command("add-node")
@click.argument("address", metavar="HOST:PORT")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def add_node(state: Any, address: str, as_json: bool) -> None:
    """Add a started node (its [[raft.peers]] listing the cluster) as a voting member.

    It catches up from the leader's latest snapshot and the log after it.

    \b
    Example: enigma raft add-node 10.0.0.4:7000
    """
    options = _options(state)
    _change(options, "add", address)
    if as_json:
        echo_json({"action": "added", "address": address, "node": options.name_of(address)})
    else:
        click.echo(f"added {address}; it is catching up (see: enigma raft status)")


@raft.command("remove-node")
@click.argument("address", metavar="HOST:PORT")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def remove_node(state: Any, address: str, as_json: bool) -> None:
    """Remove a member; stop it afterwards (its data_dir can then be deleted).

    \b
    Example: enigma raft remove-node 10.0.0.4:7000
    """
    options = _options(state)
    _change(options, "remove", address)
    if as_json:
        echo_json({"action": "removed", "address": address,
                   "node": options.name_of(address)})
    else:
        click.echo(f"removed {address} from the cluster")


def _options(state: Any) -> RaftOptions:
    from enigma_raft.member import options_of

    return options_of(state.repo())


def _change(options: RaftOptions, verb: str, address: str) -> None:
    """A membership change, committed through the log like any entry."""
    answer = str(_ask(options, options.addr, [verb, address]))
    if not answer.startswith("SUCCESS"):
        raise UnavailableError(f"the cluster refused to {verb} {address} ({answer}): is a "
                               "leader elected and no other membership change pending?")


def _ask(options: RaftOptions, address: str, command: list[str]) -> Any:
    from pysyncobj.utility import TcpUtility, UtilityException

    try:
        return TcpUtility(options.secret, ASK_TIMEOUT).executeCommand(address, command)
    except UtilityException as exc:
        raise UnavailableError(f"Raft node {address}: {command[0]} failed: {exc} (is it "
                               "running, and is [raft] secret the cluster's?)") from None
