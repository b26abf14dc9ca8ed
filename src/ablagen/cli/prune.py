"""``ablagen prune``: a physically smaller model from a ranked study, per ratio."""

from __future__ import annotations

from typing import Annotated

import typer

from ablagen.cli.app import app


def _ratios(text: str) -> tuple[float, ...]:
    from ablagen.core.errors import ConfigError

    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise ConfigError(
            f"--ratios {text!r} is not a comma list of numbers",
            "give e.g. --ratios 0.3,0.5,0.7",
        ) from exc


@app.command()
def prune(
    study: Annotated[
        str,
        typer.Argument(
            help="A ranked study (knockout or screen over neuron groups and/or attention heads).",
            show_default=False,
        ),
    ],
    ratios: Annotated[
        str,
        typer.Option(
            help="Shares of each group's channels (or heads) to remove, in (0, 1)."
        ),
    ] = "0.3,0.5,0.7",
    finetune_epochs: Annotated[
        int, typer.Option(help="Epochs of fine-tuning after the surgery.")
    ] = 2,
    seeds: Annotated[
        str, typer.Option(help="Comma list (or range) of seeds, e.g. 0,1,2 or 0-4.")
    ] = "0",
    epochs: Annotated[
        int | None,
        typer.Option(help="Baseline training epochs [default: the study's]."),
    ] = None,
    no_run: Annotated[
        bool, typer.Option("--no-run", help="Write the scripts only.")
    ] = False,
) -> None:
    """Prune the ranked channels and attention heads with Torch-Pruning's groups:
    writes STUDY/prune/pruned_<ratio>.py per ratio, runs them, writes
    STUDY/prune/prune.json and prune.png and adds a Pruning section to the report."""
    import importlib.util

    from ablagen.core.errors import ConfigError
    from ablagen.orchestrate.options import parse_seeds

    if importlib.util.find_spec("torch_pruning") is None:
        raise ConfigError(
            "ablagen prune needs Torch-Pruning, which is not installed",
            "pip install 'ablagen[prune]' (torch-pruning 1.6.x)",
        )
    from ablagen.prune.ratios import PruneOptions, prune_study

    options = PruneOptions(
        ratios=_ratios(ratios),
        finetune_epochs=finetune_epochs,
        seeds=parse_seeds(seeds),
        epochs=epochs,
        run=not no_run,
    )
    outcome = prune_study(study, options, progress=lambda s: typer.echo(s, err=True))
    for script in outcome.scripts:
        typer.echo(f"wrote {script}", err=True)
    if outcome.summary:
        _print_table(outcome.summary)


def _print_table(summary: dict) -> None:
    def cell(stats: dict, key: str, fmt: str) -> str:
        s = stats.get(key)
        if s is None or s["value"] is None:
            return "n/a"
        half = "" if s["ci_high"] is None else f" ± {s['ci_high'] - s['value']:{fmt}}"
        return f"{s['value']:{fmt}}{half}"

    typer.echo(
        "script | params before→after | MACs before→after | acc before | "
        "acc pruned | acc fine-tuned | ms b1 | ms b64"
    )
    for name, row in summary["scripts"].items():
        st = row["stats"]
        typer.echo(
            f"{name} | {cell(st, 'before.params', '.0f')}→{cell(st, 'pruned.params', '.0f')}"
            f" | {cell(st, 'before.macs', '.0f')}→{cell(st, 'pruned.macs', '.0f')}"
            f" | {cell(st, 'before.val_acc', '.4f')} | {cell(st, 'pruned.val_acc', '.4f')}"
            f" | {cell(st, 'finetuned.val_acc', '.4f')}"
            f" | {cell(st, 'before.latency_ms_b1', '.2f')}→{cell(st, 'pruned.latency_ms_b1', '.2f')}"
            f" | {cell(st, 'before.latency_ms_b64', '.2f')}→{cell(st, 'pruned.latency_ms_b64', '.2f')}"
            + (
                f" ({row['runs'] - row['ok']} failed: {row['errors'][0]})"
                if row["errors"]
                else ""
            )
        )
