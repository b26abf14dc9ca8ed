"""The typer application object; command modules register themselves on it."""

from __future__ import annotations

from typing import Annotated

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
