"""``apidistill --help`` and ``--help`` of every command, nested groups included (issue #3).

Commands are discovered from the typer app itself, so a command added later is checked
without editing this file. The top level runs once as the installed console script (a real
subprocess: entry point, imports, exit code); every command below it runs in-process through
typer's CliRunner to stay fast.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from apidistill.cli import app

WIDE = {"COLUMNS": "200", "TERMINAL_WIDTH": "200", "NO_COLOR": "1"}


def _walk(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every (path, command) below ``cmd``, depth first; groups before their commands."""
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield (*path, name), sub
        yield from _walk(sub, (*path, name))


ROOT = typer.main.get_command(app)
COMMANDS = dict(_walk(ROOT))


def _children(path: tuple[str, ...]) -> list[str]:
    node = COMMANDS[path] if path else ROOT
    return sorted(getattr(node, "commands", {}))


def _listed_commands(help_text: str) -> set[str]:
    """Names in the help's command table: rows that start with a name, not an option."""
    return set(re.findall(r"^[│|] +([a-z][\w-]*) ", help_text, flags=re.MULTILINE))


def _flat(text: str) -> str:
    return " ".join(text.split())


def _console_script() -> str:
    """The ``apidistill`` script installed next to this interpreter (else on PATH)."""
    here = Path(sys.executable).parent / "apidistill"
    found = str(here) if here.is_file() else shutil.which("apidistill")
    assert found, "the apidistill console script is not installed (pip install -e .)"
    return found


def test_the_walk_finds_the_whole_flow_including_nested_groups() -> None:
    # A floor, not the list: the help checks below run over whatever the app has.
    for stage in ("run", "harvest", "estimate", "train", "eval", "serve", "data", "policy"):
        assert (stage,) in COMMANDS, sorted(COMMANDS)
    assert ("policy", "validate") in COMMANDS and ("data", "inspect") in COMMANDS
    assert any(len(p) == 2 for p in COMMANDS)


def test_top_level_help_of_the_console_script_lists_every_command() -> None:
    done = subprocess.run(
        [_console_script(), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **WIDE},
    )
    assert done.returncode == 0, done.stderr
    assert "Usage: apidistill" in done.stdout
    # Every command of the app is listed (none hidden), and nothing else.
    assert _listed_commands(done.stdout) == set(_children(())), done.stdout


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_every_command_has_working_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], prog_name="apidistill", env=WIDE)
    assert result.exit_code == 0, result.output
    assert result.exception is None, result.exception
    assert f"Usage: apidistill {' '.join(path)}" in result.output, result.output
    help_text = COMMANDS[path].help or COMMANDS[path].short_help
    assert help_text, f"`apidistill {' '.join(path)}` has no help text"
    opening = " ".join(help_text.split()[:4])
    assert opening in _flat(result.output), (opening, result.output)  # its own description
    assert "--help" in result.output
    if _children(path):  # a group lists exactly its commands
        assert _listed_commands(result.output) == set(_children(path)), result.output
