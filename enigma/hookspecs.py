"""The plugin contract: every hook a plugin may implement.

A plugin is a module registered under the ``enigma`` entry-point group (the entry-point
name is the distribution name). It implements any of the hooks below with
``@enigma.hookimpl``. The ``register_*`` hooks return one class or a list of classes, each
a subclass of the matching ABC in ``enigma.interfaces`` carrying ``name``.

Example::

    from enigma import hookimpl
    from enigma.interfaces import Compressor

    class Lz4(Compressor):
        name = "lz4"
        ...

    @hookimpl
    def register_compressors():
        return [Lz4]
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("enigma")
hookimpl = pluggy.HookimplMarker("enigma")


@hookspec
def register_chunkers() -> Any:
    """Return ``Chunker`` subclasses (``[enigma.chunk_strategy.<name>]``)."""


@hookspec
def register_compressors() -> Any:
    """Return ``Compressor`` subclasses (``[enigma.compression] algorithm = <name>``)."""


@hookspec
def register_storage_providers() -> Any:
    """Return ``StorageProvider`` subclasses (``[[providers]] type = <name>``)."""


@hookspec
def register_key_providers() -> Any:
    """Return ``KeyProvider`` subclasses (``[enigma] key_provider = <name>``)."""


@hookspec
def register_distribution_policies() -> Any:
    """Return ``DistributionPolicy`` subclasses (``[enigma] distribution = <name>``)."""


@hookspec
def register_servers() -> Any:
    """Return ``Server`` subclasses that ``enigma serve`` can start."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the ``enigma`` click group ``cli``."""


@hookspec
def wrap_manifest(manifest: Any, config: Any, repository: Any) -> Any:
    """Return an object that takes over the manifest's mutating operations, or None.

    This is the seam for replication: the returned object exposes the same named
    mutating operations as ``enigma.manifest.Manifest`` (e.g. by committing each through
    Raft before applying it locally) and its ``read_barrier``. ``repository.serving`` is
    True in ``enigma serve`` (a long-lived cluster member) and False in one-shot CLI
    commands; ``repository.reveal`` decrypts ``enc:`` secrets. At most one plugin may
    answer for a given config.
    """
