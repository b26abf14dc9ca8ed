"""The typer application object; command modules register themselves on it."""

from __future__ import annotations

import re
from typing import Annotated

import click
import typer

from ablagen import __version__

app = typer.Typer(
    name="ablagen",
    help="Automated ablation studies for PyTorch models: analyze, generate, run, rank, hybrid, study.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ablagen {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="Show the version and exit.",
        ),
    ] = False,
) -> None:
    """Automated ablation studies for PyTorch models."""


def plain_help(command: click.Command) -> click.Command:
    """``command`` (and its subcommands) with every option's help as plain text:
    typer reads help as rich markup, where ``[default: one per core]`` is an
    unknown style tag and vanishes ("Runs at once ."). Each ``[`` is escaped once."""
    for param in command.params:
        help_text = getattr(param, "help", None)
        if help_text:
            param.help = re.sub(r"(?<!\\)\[", r"\\[", help_text)  # type: ignore[attr-defined]
    for sub in getattr(command, "commands", {}).values():
        plain_help(sub)
    return command
