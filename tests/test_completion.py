"""``enigma completion SHELL``: click's scripts, and the real executable answering them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import ENIGMA, Enigma

BIN = str(Path(ENIGMA).parent)


def complete(*words: str) -> list[str]:
    """What the real ``enigma`` offers for the last word, asked as the bash script asks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENIGMA_", "_ENIGMA"))}
    env.update(_ENIGMA_COMPLETE="bash_complete", COMP_WORDS=" ".join(("enigma", *words)),
               COMP_CWORD=str(len(words)))
    done = subprocess.run([ENIGMA], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_bash_script_is_valid_bash(tmp_path: Path) -> None:
    script = Enigma(tmp_path / "config").ok("completion", "bash").out
    assert "_ENIGMA_COMPLETE=bash_complete" in script and "complete " in script
    checked = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize("shell,marker", [("zsh", "#compdef enigma"),
                                          ("fish", "complete --no-files --command enigma")])
def test_zsh_and_fish_scripts(tmp_path: Path, shell: str, marker: str) -> None:
    script = Enigma(tmp_path / "config").ok("completion", shell).out
    assert marker in script and f"_ENIGMA_COMPLETE={shell}_complete" in script
    if shutil.which(shell):
        checked = subprocess.run([shell, "-n"], input=script, capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr


def test_commands_and_options_complete() -> None:
    assert complete("ba") == ["plain,backup"]
    assert set(complete("k")) == {"plain,key"}
    assert set(complete("key", "")) >= {"plain,rotate", "plain,list", "plain,export-recipient"}
    assert "plain,--force" in complete("backup", "--f")
    assert "plain,--json" in complete("status", "--j")
    assert "plain,--read-data-subset" in complete("check", "--read-data-")
    assert set(complete("completion", "")) == {"plain,bash", "plain,zsh", "plain,fish"}
    assert complete("restore", "x", "") == ["file,"]  # DEST: the shell completes paths
    assert "plain,--verbose" in complete("--verb")


def test_plugin_commands_complete() -> None:
    pytest.importorskip("enigma_raft")
    assert "plain,raft" in complete("ra")
    assert "plain,add-node" in complete("raft", "add")


def test_bash_fills_compreply_through_the_script(tmp_path: Path) -> None:
    """Source the generated script and run its function the way bash's TAB would."""
    script = Enigma(tmp_path / "config").ok("completion", "bash").out
    (tmp_path / "enigma.bash").write_text(script)
    program = (f"source {tmp_path / 'enigma.bash'}\n"
               "COMP_WORDS=(enigma backup --fo); COMP_CWORD=2\n"
               "_enigma_completion enigma\n"
               'printf "%s\\n" "${COMPREPLY[@]}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("_ENIGMA")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(["bash", "-c", program], env=env, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["--force"]


def test_unknown_shell_is_a_usage_error(tmp_path: Path) -> None:
    result = Enigma(tmp_path / "config")("completion", "tcsh")
    assert result.code == 2 and "tcsh" in result.err and "Traceback" not in result.err
