"""Every `driftline` command answers --help with what it does and its options."""

from __future__ import annotations

import click
import pytest
import typer
from typer.testing import CliRunner

from driftline.cli import app

COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_the_cli_has_the_documented_commands() -> None:
    documented = {
        "generate",
        "feast",
        "materialize",
        "retrain",
        "monitor",
        "drift-event",
        "status",
        "promote",
        "rollback",
        "reconcile",
        "up",
        "down",
        "demo",
        "quarantine",
        "check",
        "env",
        "settings",
        "simulate",
    }
    assert documented <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help(name: str) -> None:
    command: click.Command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
    result = CliRunner().invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output and name in result.output
    assert command.help and command.help.split("\n")[0].strip(), f"{name} has no description"
    assert command.help.split("\n")[0].strip()[:40] in " ".join(result.output.split())
