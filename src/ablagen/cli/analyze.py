"""``ablagen analyze``: the component inventory as a tree of modules, a table or JSON."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ablagen.cli.app import app
from ablagen.cli.flags import DatasetOpt, InputShapeOpt, ModelArg, NeuronGroupsOpt


@app.command()
def analyze(
    model: ModelArg,
    input_shape: InputShapeOpt = None,
    dataset: DatasetOpt = None,
    neuron_groups: NeuronGroupsOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print stable JSON instead of the tree.")
    ] = False,
    flat: Annotated[
        bool,
        typer.Option(
            "--flat",
            help="Print one table row per component (every neuron group and head) "
            "instead of the tree of modules.",
        ),
    ] = False,
) -> None:
    """List every ablatable component: layers, blocks, activations, neuron groups."""
    from ablagen.analyze import analyze as build
    from ablagen.analyze.loading import load_model

    loaded = load_model(model, input_shape, dataset)  # the data: one sample's shape
    inventory = build(loaded, neuron_groups)
    if loaded.input_note:
        typer.echo(f"note: {loaded.input_note}", err=True)
    for warning in inventory.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if as_json:
        typer.echo(json.dumps(inventory.to_json(), indent=2, sort_keys=True))
        return
    if flat:
        _print_table(inventory)
        return
    from ablagen.analyze.module_tree import render_tree

    types = {name: type(m).__name__ for name, m in loaded.model.named_modules()}
    typer.echo(render_tree(inventory, types), nl=False)


def _print_table(inventory) -> None:
    from rich.console import Console
    from rich.table import Table

    tracer = {"fx": "torch.fx", "export": "torch.export", "hooks": "forward hooks"}
    table = Table(
        title=f"{inventory.model}: {len(inventory.components)} components "
        f"(read by {tracer.get(inventory.tracer, inventory.tracer)})"
    )
    for column in (
        "id",
        "kind",
        "op",
        "input",
        "output",
        "params",
        "methods",
        "residual",
    ):
        table.add_column(
            column, justify="right" if column == "params" else "left", no_wrap=True
        )
    for comp in inventory.components:
        table.add_row(
            comp.id,
            comp.kind,
            comp.op,
            _shape(comp.input_shape),
            _shape(comp.output_shape),
            f"{comp.params:,}",
            ",".join(comp.methods),
            "yes" if comp.feeds_residual else "",
        )
    console = Console()
    if not console.is_terminal:  # piped: never truncate ids
        console = Console(width=200)
    console.print(table)


def _shape(shape) -> str:
    return "" if shape is None else "x".join(str(d) for d in shape)
