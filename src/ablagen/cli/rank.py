"""``ablagen rank``: importance with uncertainty, noise scales, plots and report."""

from __future__ import annotations

from typing import Annotated

import typer

from ablagen.cli.app import app
from ablagen.study.options import RankOptions

_RANK = RankOptions()  # every default below is one of its field defaults


@app.command()
def rank(
    ctx: typer.Context,
    study: Annotated[
        str,
        typer.Argument(
            help="Study directory made by `ablagen generate` and run.",
            show_default=False,
        ),
    ],
    metric: Annotated[
        str,
        typer.Option(
            help="Result metric: a key of result['final'] or a top-level number."
        ),
    ] = _RANK.metric,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print importance.json to stdout instead of a table."
        ),
    ] = False,
    as_csv: Annotated[
        bool,
        typer.Option(
            "--csv", help="Print importance.csv to stdout instead of a table."
        ),
    ] = False,
    no_plots: Annotated[
        bool, typer.Option("--no-plots", help="Skip importance.png and curves.png.")
    ] = not _RANK.plots,
    top_k: Annotated[
        int,
        typer.Option(
            "--top-k", min=0, help="Variants shown next to the baseline in curves.png."
        ),
    ] = _RANK.top_k,
    min_scale: Annotated[
        float, typer.Option(help="Noise scale of the most important component.")
    ] = _RANK.min_scale,
    max_scale: Annotated[
        float,
        typer.Option(help="Noise scale of components whose ablation changed nothing."),
    ] = _RANK.max_scale,
    temperature: Annotated[
        float, typer.Option(help="Curvature of the importance-to-scale mapping (> 0).")
    ] = _RANK.temperature,
) -> None:
    """Rank components by paired importance over seeds; write importance.json/.csv,
    noise_scales.json, plots and report.md into the study directory."""
    from ablagen.report.markdown import rank_study

    given = getattr(ctx.get_parameter_source("metric"), "name", "DEFAULT")
    _screen_has_no_accuracy(study, metric, given != "DEFAULT")
    options = RankOptions(
        metric=metric,
        plots=not no_plots,
        top_k=top_k,
        min_scale=min_scale,
        max_scale=max_scale,
        temperature=temperature,
    )
    out = rank_study(study, options)
    if as_json:
        typer.echo(out.ranking.dumps(), nl=False)
    elif as_csv:
        typer.echo(out.ranking.to_csv(), nl=False)
    else:
        _print_table(out.ranking, study)
        typer.echo("wrote " + ", ".join(p.name for p in out.files), err=True)


def _print_table(ranking, study: str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from ablagen.rank.ranking import NO_INTERVAL, readable, single_seed_note

    table = Table(
        title=f"importance on {ranking.metric} ({ranking.confidence:.0%} CI, paired by seed)"
    )
    for column in ("rank", "variant", "kind", "method", "importance", "CI", "n", "≈0"):
        table.add_column(
            column,
            justify="right" if column in ("rank", "importance", "n") else "left",
            no_wrap=True,
        )
    for r in ranking.rows:
        half = "" if r.ci_high is None else f" ± {readable(r.ci_high - r.mean, False)}"
        ci = (
            NO_INTERVAL
            if r.ci_low is None
            else f"[{readable(r.ci_low)}, {readable(r.ci_high)}]"
        )
        table.add_row(
            str(r.rank),
            escape(r.variant),
            r.kind,
            r.method,
            f"{readable(r.mean)}{half}",
            ci,
            str(r.n),
            r.mark,
        )
    console = Console()
    if not console.is_terminal:  # piped: never truncate ids
        console = Console(width=200)
    console.print(table)
    note = single_seed_note(ranking, study)
    if note:
        console.print(f"[yellow]note[/yellow] {escape(note)}", highlight=False)
    for f in ranking.failed:
        statuses = ", ".join(f"seed {s}: {st}" for s, st in f.statuses)
        console.print(
            f"[yellow]not ranked[/yellow] {escape(f.variant)} ({statuses})",
            highlight=False,
        )


def _screen_has_no_accuracy(study: str, metric: str, given: bool) -> None:
    """``--metric val_acc`` given on a screen study or one whose task has no accuracy:
    one line, exit 2 (the default val_acc stands for val_loss there; an explicit one
    is a mistake)."""
    from ablagen.core.errors import StudyError
    from ablagen.core.studydir import load_manifest
    from ablagen.report.markdown import NO_ACCURACY

    if metric != "val_acc" or not given:
        return
    manifest = load_manifest(study)
    task = (manifest.config.get("train") or {}).get("task", "classification")
    if task in NO_ACCURACY:  # the default val_acc stands for its own metric there
        raise StudyError(
            f"a --task {task} study scores no accuracy (val_acc)",
            f"rank it with --metric {NO_ACCURACY[task]} (its default)",
        )
    if manifest.mode == "screen":
        raise StudyError(
            "a screen study estimates changes of the validation loss, not val_acc",
            "rank it with --metric val_loss (the default for a screen), or verify it "
            "with a knockout study",
        )
