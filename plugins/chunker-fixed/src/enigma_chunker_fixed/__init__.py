"""Enigma plugin: fixed-size chunking (``[enigma.chunk_strategy.Fixed] size = N``).

This module is the entry point, so it stays tiny: the chunker's module is imported only
when the core asks for chunkers, which keeps ``enigma --help`` fast.
"""

from __future__ import annotations

from typing import Any

from enigma import hookimpl


@hookimpl
def register_chunkers() -> Any:
    from enigma_chunker_fixed.chunker import FixedChunker

    return [FixedChunker]
