"""`apidistill` entry point: exit codes and messages users see (Ctrl-C, usage, our errors)."""

from __future__ import annotations

import sys

import pytest
import typer

import apidistill.cli as cli
from apidistill.errors import ConfigError


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.command()
    def stage(what: str) -> None:
        if what == "interrupt":
            raise KeyboardInterrupt
        if what == "bad":
            raise ConfigError("unknown key", key="teacher.modle", hint="did you mean model?")
        if what == "exit":
            raise typer.Exit(130)
        print("ran")

    @app.command()
    def other() -> None:
        pass

    return app


def _main(monkeypatch, *argv: str) -> int:
    monkeypatch.setattr(cli, "app", _app())
    monkeypatch.setattr(sys, "argv", ["apidistill", *argv])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    return exc.value.code


def test_ctrl_c_in_any_stage_says_what_is_saved_and_exits_130(monkeypatch, capsys) -> None:
    assert _main(monkeypatch, "stage", "interrupt") == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "re-run to resume" in err and "Aborted" not in err


def test_exit_codes_of_commands_and_errors(monkeypatch, capsys) -> None:
    assert _main(monkeypatch, "stage", "ok") == 0
    assert "ran" in capsys.readouterr().out
    assert _main(monkeypatch, "stage", "exit") == 130  # a command's own exit code survives
    assert _main(monkeypatch, "stage", "bad") == 2
    err = capsys.readouterr().err
    assert "teacher.modle" in err and "did you mean model?" in err and "Traceback" not in err
    assert _main(monkeypatch, "nosuch") == 2  # click's usage error, its own message
    assert "No such command" in capsys.readouterr().err
