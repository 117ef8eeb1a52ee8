#!/usr/bin/env python3
"""Render an ``enigma.toml`` template: each ``${NAME}`` becomes environment variable NAME.

Why: ``enigma.toml`` has no variable substitution, but a Kubernetes ConfigMap is the same
for every pod while ``[raft] node_id`` differs per pod and the credentials live in a
Secret. The StatefulSet's init container runs this with ``POD_NAME`` (downward API) and the
Secret's values in its environment and writes the real config into an in-memory volume
that the gateway container mounts read-only as its config directory.

Placeholders must sit inside double-quoted TOML strings; values are escaped for that
context, so a quote or backslash in a secret can neither break the file nor inject keys.
A variable that is not set stops the pod with its name (values are never printed).
Standard library only: it runs in the Enigma image before anything else.

Usage: enigma-render-config TEMPLATE OUTPUT
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Mapping

PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


class MissingVariables(KeyError):
    """Placeholders whose environment variable is not set (names only, never values)."""


def toml_escape(value: str) -> str:
    """``value`` as the inside of a TOML basic string (between double quotes)."""
    out = []
    for char in value:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return "".join(out)


def placeholders(template: str) -> list[str]:
    """The variable names a template needs, in order of first use."""
    return list(dict.fromkeys(PLACEHOLDER.findall(template)))


def render(template: str, env: Mapping[str, str]) -> str:
    """Substitute every placeholder; ``MissingVariables`` lists all that are unset."""
    missing = [name for name in placeholders(template) if name not in env]
    if missing:
        raise MissingVariables(", ".join(missing))
    return PLACEHOLDER.sub(lambda m: toml_escape(env[m.group(1)]), template)


def write_private(path: str, text: str) -> None:
    """Write atomically with mode 0600: the rendered file holds secrets."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".enigma-toml-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: enigma-render-config TEMPLATE OUTPUT", file=sys.stderr)
        return 2
    template_path, output_path = argv
    try:
        with open(template_path, encoding="utf-8") as src:
            template = src.read()
        write_private(output_path, render(template, os.environ))
    except MissingVariables as exc:
        print(f"enigma-render-config: {template_path}: environment variables not set: "
              f"{exc.args[0]}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"enigma-render-config: {exc}", file=sys.stderr)
        return 1
    print(f"enigma-render-config: wrote {output_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
