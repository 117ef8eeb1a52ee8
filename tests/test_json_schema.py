"""docs/json.md is the contract of every ``--json``: its schemas must be valid, its examples
must match them, every command with ``--json`` must have one, and what the real CLI prints
on a real repository (healthy and damaged) must validate against it."""

from __future__ import annotations

import json
import re
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import click
import pytest
from helpers import Enigma, assert_clean_error, make_tree

jsonschema = pytest.importorskip("jsonschema")

DOC = Path(__file__).resolve().parents[1] / "docs" / "json.md"
#: Commands whose output another test validates (they need a running cluster).
VALIDATED_ELSEWHERE = {("raft", "status"), ("raft", "add-node"), ("raft", "remove-node")}
_BLOCK = re.compile(r"^```json\n(.*?)^```", re.S | re.M)


@cache
def doc_sections() -> list[tuple[str, list[Any]]]:
    """(heading, parsed ```json blocks) for each ``###`` section of docs/json.md."""
    sections = []
    for part in re.split(r"^### ", DOC.read_text(encoding="utf-8"), flags=re.M)[1:]:
        heading = part.splitlines()[0]
        sections.append((heading, [json.loads(b) for b in _BLOCK.findall(part)]))
    return sections


def schemas() -> dict[tuple[str, ...], dict[str, Any]]:
    """Command path (e.g. ("key", "list")) -> its schema, from the schemas' titles."""
    found: dict[tuple[str, ...], dict[str, Any]] = {}
    for _heading, blocks in doc_sections():
        for block in blocks:
            if isinstance(block, dict) and "$schema" in block:
                title = block["title"]
                assert re.fullmatch(r"enigma( [a-z-]+)+ --json", title), title
                path = tuple(title.split()[1:-1])
                assert path not in found, f"two schemas for {title}"
                found[path] = block
    return found


def validate(path: tuple[str, ...], value: Any) -> None:
    schema = schemas()[path]
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(value), key=str)
    assert not errors, (f"enigma {' '.join(path)} --json does not match docs/json.md: "
                        + "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]))


def parse_output(out: str) -> Any:
    """One JSON document; or JSON lines (progress events) ending with a summary line."""
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        lines = [json.loads(line) for line in out.splitlines() if line.strip()]
        summaries = [v for v in lines if isinstance(v, dict)
                     and v.get("message_type") == "summary"]
        assert len(summaries) == 1, f"no single summary line in: {out[:500]!r}"
        return summaries[0]


def command_tree() -> dict[tuple[str, ...], click.Command]:
    """Every command of the real CLI, plugin commands included, by path."""
    from enigma.cli import cli
    from enigma.plugin_manager import PluginManager

    PluginManager().pm.hook.register_commands(cli=cli)  # what main() does
    tree: dict[tuple[str, ...], click.Command] = {}

    def walk(command: click.Command, path: tuple[str, ...]) -> None:
        tree[path] = command
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, (*path, name))

    walk(cli, ())
    return tree


def json_commands() -> dict[tuple[str, ...], click.Command]:
    return {path: cmd for path, cmd in command_tree().items()
            if any("--json" in p.opts for p in cmd.params if isinstance(p, click.Option))}


def test_schemas_are_valid_and_every_example_matches_one() -> None:
    assert len(schemas()) >= 20
    for heading, blocks in doc_sections():
        section_schemas = [b for b in blocks if isinstance(b, dict) and "$schema" in b]
        assert section_schemas, f"section {heading!r} has no schema"
        for schema in section_schemas:
            jsonschema.Draft202012Validator.check_schema(schema)
            assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        examples = [b for b in blocks if not (isinstance(b, dict) and "$schema" in b)]
        assert examples, f"section {heading!r} has no example"
        for example in examples:
            assert any(jsonschema.Draft202012Validator(s).is_valid(example)
                       for s in section_schemas), f"an example in {heading!r} matches no schema"


def test_every_json_command_has_a_schema_and_every_schema_a_command() -> None:
    commands = json_commands()
    assert ("backup",) in commands and ("key", "list") in commands
    missing = sorted(" ".join(p) for p in commands.keys() - schemas().keys())
    assert not missing, f"--json without a schema in docs/json.md: {missing}"
    tree = command_tree()
    unknown = sorted(" ".join(p) for p in schemas().keys() - commands.keys())
    assert not unknown, (f"docs/json.md has schemas for commands that do not exist or have "
                         f"no --json: {unknown} (known: {sorted(' '.join(p) for p in tree)})")


class Session:
    """Runs commands with --json on real repositories and keeps what they printed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = root / "store"
        self.toml = f'[[providers]]\nname = "local"\ntype = "Local"\npath = "{self.store}"\n'
        self.outputs: dict[tuple[str, ...], list[Any]] = {}
        self.cli = self.repo("main")

    def repo(self, name: str, toml: str | None = None) -> Enigma:
        config_dir = self.root / name
        config_dir.mkdir()
        if toml is not None or name == "main":
            (config_dir / "enigma.toml").write_text(self.toml if toml is None else toml)
        return Enigma(config_dir)

    def run(self, path: tuple[str, ...], *args: str, code: int = 0,
            cli: Enigma | None = None) -> Any:
        result = (cli or self.cli)(*path, *args, "--json")
        assert result.code == code, (path, args, result.code, result.err)
        value = parse_output(result.out)
        self.outputs.setdefault(path, []).append(value)
        return value


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    s = Session(tmp_path_factory.mktemp("json"))
    # Packs on (the default): small files go into packs, and the big random file's
    # full-size chunks are objects of their own, which the damage below needs.
    source = make_tree(s.root / "src", big_file_size=3_000_000)
    s.run(("init",))
    first = s.run(("backup",), str(source))["backup_id"]
    (source / "added.txt").write_text("new in the second backup\n" * 100)
    second = s.run(("backup",), str(source))["backup_id"]
    for path, args in [(("list",), ()), (("log",), (first,)), (("status",), ()),
                       (("config",), ()), (("verify",), (second,)),
                       (("restore",), (second, "--list")),
                       (("restore",), (second, str(s.root / "out"))),
                       (("check",), ()), (("check",), ("--read-data-subset", "50%")),
                       (("forget",), ("--keep-last", "1", "--dry-run")),
                       (("forget",), (first, "--dry-run")), (("gc",), ("--dry-run",)),
                       (("repair",), ("--dry-run",)), (("plugins",), ()),
                       (("encrypt-cred",), ("an example secret",)), (("key", "list"), ()),
                       (("key", "export-recipient"), (str(s.root / "reader.pub"),)),
                       (("key", "list"), ()), (("key", "rotate"), ())]:
        s.run(path, *args)
    # A write-only client sealing to the exported recipient key.
    client = s.repo("client")
    s.run(("init",), "--recipient", str(s.root / "reader.pub"), cli=client)
    s.run(("key", "list"), cli=client)
    s.run(("key", "set-recipient"), str(s.root / "reader.pub"), cli=client)
    # A lost machine: only enigma.toml; recovered from a snapshot.
    s.run(("recover",), cli=s.repo("lost", s.toml))
    s.run(("forget",), "--keep-last", "1", "--prune")
    s.run(("gc",))
    # Damage: one chunk bit-flipped, one deleted; every reporting command names them.
    # (Single chunk objects, damaged one at a time; damaged packs: tests/test_packs.py.)
    assert any(p.is_file() for p in (s.store / "packs").rglob("*"))
    chunks = sorted(p for p in (s.store / "chunks").rglob("*") if p.is_file())
    assert len(chunks) >= 2
    data = bytearray(chunks[0].read_bytes())
    data[len(data) // 2] ^= 1
    chunks[0].write_bytes(bytes(data))
    chunks[1].unlink()
    bad = s.run(("verify",), second, code=1)
    assert bad["bad"], bad
    assert s.run(("check",), "--read-data", code=1)["problems"]
    assert s.run(("restore",), second, str(s.root / "out2"), code=1)["damaged"]
    assert s.run(("repair",), code=1)["failed"]
    # No usable snapshot: the chunk index is rebuilt from the chunks.
    shutil.rmtree(s.store / "meta" / "manifest")
    rebuilt = s.run(("recover",), cli=s.repo("rebuilt", s.toml))
    assert rebuilt["rebuilt"] and rebuilt["damaged"], rebuilt
    return s


CORE = sorted(p for p in schemas() if p not in VALIDATED_ELSEWHERE)


@pytest.mark.parametrize("path", CORE, ids=[" ".join(p) for p in CORE])
def test_real_output_matches_the_documented_schema(session: Session,
                                                   path: tuple[str, ...]) -> None:
    assert path in session.outputs, f"enigma {' '.join(path)} --json was never run here"
    for value in session.outputs[path]:
        validate(path, value)


def test_every_json_command_is_run_here_or_elsewhere(session: Session) -> None:
    not_run = sorted(" ".join(p) for p in json_commands()
                     if p not in session.outputs and p not in VALIDATED_ELSEWHERE)
    assert not not_run, f"commands with --json nothing validates: {not_run}"


def test_schema_catches_an_undocumented_field(session: Session) -> None:
    """The check above can fail: a field the doc does not name is an error."""
    value = dict(session.outputs[("status",)][0], surprise=1)
    with pytest.raises(AssertionError, match="surprise"):
        validate(("status",), value)


def test_errors_with_json_are_one_line_on_stderr(session: Session) -> None:
    result = session.cli("verify", "0123456789abcdef", "--json")
    assert_clean_error(result, "no backup", code=1)
    assert result.out == ""
