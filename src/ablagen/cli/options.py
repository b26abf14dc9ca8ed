"""Option types shared by several commands."""

from __future__ import annotations

from typing import Annotated

import typer

ModelArg = Annotated[
    str,
    typer.Argument(
        help="Model file, optionally with :NAME (a class, factory function or instance).",
        show_default=False,
    ),
]
InputShapeOpt = Annotated[
    str | None,
    typer.Option(
        "--input-shape",
        help="One sample's shape without the batch dimension, e.g. 1,8,8.",
    ),
]
NeuronGroupsOpt = Annotated[
    int | None,
    typer.Option(
        "--neuron-groups",
        min=1,
        help="Split each layer's output units into K contiguous groups (default: one per unit up to 32 units, else 32 groups).",
    ),
]
