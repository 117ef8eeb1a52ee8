"""Entry point of ``enigma-raft``: wraps the manifest when ``[raft]`` is configured and adds
``enigma raft ...``. pysyncobj is imported only when a cluster is actually used."""

from __future__ import annotations

from typing import Any

import click

from enigma import hookimpl


@hookimpl
def wrap_manifest(manifest: Any, config: Any, repository: Any) -> Any:
    if config.raw.get("raft") is None:
        return None
    from enigma_raft.member import join

    return join(manifest, repository)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from enigma_raft.commands import raft

    cli.add_command(raft)
