"""Every command's --help, plugin commands included, shows an example of its use."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from helpers import Enigma
from test_json_schema import command_tree

TREE = command_tree()


@pytest.mark.parametrize("path", sorted(TREE), ids=[" ".join(p) or "enigma" for p in sorted(TREE)])
def test_help_has_an_example(path: tuple[str, ...]) -> None:
    command = TREE[path]
    ctx = click.Context(command, info_name=" ".join(("enigma", *path)))
    text = command.get_help(ctx)
    assert "Example" in text, f"enigma {' '.join(path)} --help shows no example:\n{text}"
    # The example runs this very command (a group's: one of its subcommands).
    assert " ".join(("enigma", *path)) in text.split("Example", 1)[1], text


def test_the_walk_reaches_every_subcommand() -> None:
    groups = {p: c for p, c in TREE.items() if isinstance(c, click.Group)}
    assert {(), ("key",)} <= groups.keys()
    for path, group in groups.items():
        assert group.commands, path
        for name in group.commands:
            assert (*path, name) in TREE  # walked, so its own help is checked above


def test_real_executable_help_includes_plugin_commands(tmp_path: Path) -> None:
    """The installed `enigma` registers plugin commands before parsing, as a user sees."""
    runner = Enigma(tmp_path / "config")
    top = runner.ok("--help").out
    assert "completion" in top and "Example" in top
    missing = [p[0] for p in TREE if len(p) == 1 and p[0] not in top]
    assert not missing, f"missing from enigma --help: {missing}"
    if ("raft", "status") in TREE:
        assert "Example" in runner.ok("raft", "status", "--help").out
    assert "Example" in runner.ok("key", "rotate", "--help").out
