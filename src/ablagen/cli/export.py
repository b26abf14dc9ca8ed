"""``ablagen export``: a study's runs into MLflow and/or TensorBoard."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, TextIO

import typer

from ablagen.cli.app import app

#: options whose value may be left out (``--mlflow`` alone: the default store)
OPTIONAL_VALUE = ("--mlflow", "--tensorboard")
_TAKES_VALUE = ("--metric", "--experiment")


def optional_values(argv: Sequence[str]) -> list[str]:
    """``export S --mlflow`` -> ``export S --mlflow=`` (typer has no optional values).

    A token after ``--mlflow`` is its URI when it is not an option and STUDY was
    given before it, or another positional follows (``--mlflow URI STUDY``).
    """
    args = list(argv)
    command = next((i for i, a in enumerate(args) if not a.startswith("-")), None)
    if command is None or args[command] != "export":
        return args
    out = args[: command + 1]
    rest = args[len(out) :]
    seen_study = False
    i = 0
    while i < len(rest):
        token = rest[i]
        if token in OPTIONAL_VALUE:
            nxt = rest[i + 1] if i + 1 < len(rest) else None
            after = rest[i + 2] if i + 2 < len(rest) else None
            is_value = (
                nxt is not None
                and not nxt.startswith("-")
                and (seen_study or (after is not None and not after.startswith("-")))
            )
            if is_value:
                out.append(f"{token}={nxt}")
                i += 2
            else:
                out.append(f"{token}=")
                i += 1
            continue
        if token in _TAKES_VALUE and i + 1 < len(rest):
            out += [token, rest[i + 1]]
            i += 2
            continue
        if token == "--":
            out += rest[i:]
            break
        seen_study = seen_study or not token.startswith("-")
        out.append(token)
        i += 1
    return out


def entries(runs: int, variants: int) -> str:
    """``44 runs of 12 variants, 56 entries with the variants' own``: what an export
    writes, counted as the progress and the summary count it."""
    return (
        f"{runs} runs of {variants} variants, "
        f"{runs + variants} entries with the variants' own"
    )


class PlainExportProgress:
    """One line per target and per written run: for logs and pipes."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, ev) -> None:
        if ev.event == "start":
            print(
                f"exporting {entries(ev.total - ev.variants, ev.variants)} "
                f"to {ev.tracker} ({ev.location})",
                file=self.stream,
                flush=True,
            )
        elif ev.event == "run" and ev.run is not None:
            width = len(str(ev.total))
            quiet = ("ok", "ranked", "baseline", "arm", "unranked")
            status = "" if ev.run.status in quiet else f" {ev.run.status}"
            print(
                f"[{ev.done:>{width}}/{ev.total}] {ev.action:<9} {ev.run.name}{status}",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        """Nothing to tear down."""


class RichExportProgress:
    """A bar per target."""

    def __init__(self, console) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[last]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.tasks: dict[str, object] = {}
        self.bar.start()

    def __call__(self, ev) -> None:
        from rich.markup import escape

        if ev.event == "start":
            self.tasks[ev.tracker] = self.bar.add_task(
                ev.tracker, total=ev.total, last=""
            )
        elif ev.event == "run" and ev.run is not None:
            self.bar.update(
                self.tasks[ev.tracker],
                completed=ev.done,
                last=escape(f"{ev.action} {ev.run.name}"),
            )
        elif ev.event == "end":
            self.bar.update(self.tasks[ev.tracker], completed=ev.total, last="")

    def close(self) -> None:
        self.bar.stop()


def viewer_command(kind: str, location: str) -> str:
    """The command that shows the exported runs."""
    if kind == "tensorboard":
        return f"tensorboard --logdir {location}"
    if location.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {location}"
    if location.startswith("file:"):
        return f"MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri {location}"
    return f"open {location} in a browser"


@app.command()
def export(
    study_dir: Annotated[
        str,
        typer.Argument(help="A study directory that was run.", show_default=False),
    ],
    mlflow: Annotated[
        str | None,
        typer.Option(
            "--mlflow",
            metavar="[URI]",
            help="Export to MLflow; URI of a tracking server or store, or a directory (default: MLflow's SQLite store STUDY/mlflow.db, artifacts in STUDY/mlartifacts).",
        ),
    ] = None,
    tensorboard: Annotated[
        str | None,
        typer.Option(
            "--tensorboard",
            metavar="[DIR]",
            help="Write TensorBoard event files, one run directory per variant/seed (default: STUDY/tensorboard).",
        ),
    ] = None,
    experiment: Annotated[
        str | None,
        typer.Option(
            help="MLflow experiment name (default: the study directory's absolute path)."
        ),
    ] = None,
    metric: Annotated[
        str, typer.Option(help="Metric of the importance the parent runs carry.")
    ] = "val_acc",
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="No progress; print the summary only."),
    ] = False,
) -> None:
    """Export every run (failed ones too, with their error) to MLflow and/or
    TensorBoard. Exporting again updates, never duplicates."""
    from rich.console import Console

    from ablagen.core.errors import ConfigError
    from ablagen.track import Target, export_study

    targets = []
    if mlflow is not None:
        targets.append(Target("mlflow", mlflow or None, experiment))
    if tensorboard is not None:
        targets.append(Target("tensorboard", tensorboard or None))
    if not targets:
        raise ConfigError(
            "nothing to export to", "pass --mlflow [URI] and/or --tensorboard [DIR]"
        )
    console = Console(highlight=False)
    reporter = (
        None
        if quiet
        else (
            RichExportProgress(console)
            if console.is_terminal
            else PlainExportProgress(sys.stdout)
        )
    )
    try:
        summary = export_study(study_dir, targets, metric=metric, progress=reporter)
    finally:
        if reporter is not None:
            reporter.close()
    print_export_summary(summary)


def print_export_summary(summary) -> None:
    for target in summary.targets:
        counts = ", ".join(f"{n} {a}" for a, n in sorted(target.counts.items()))
        typer.echo(
            f"{target.kind}: {entries(summary.runs, summary.variants)} ({counts}) "
            f"in {target.location}"
        )
    if summary.not_ok:
        listed = "; ".join(
            f"{r.name} {r.status}: {r.tags.get('error', '')}".rstrip(": ")
            for r in summary.not_ok[:5]
        )
        more = (
            f"; and {len(summary.not_ok) - 5} more" if len(summary.not_ok) > 5 else ""
        )
        typer.echo(
            f"{len(summary.not_ok)} runs not ok, exported with status and error: {listed}{more}"
        )
    if not summary.ranked:
        typer.echo(f"parents carry no importance: {summary.rank_note}")
    if summary.stale:
        typer.echo(
            f"{summary.stale} stored runs of scripts regenerated since were not exported"
        )
    if summary.running:
        typer.echo(f"{summary.running} runs still running; export again when they end")
    for target in summary.targets:
        typer.echo(f"view: {viewer_command(target.kind, target.location)}")


TrackOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--track",
        help="Export each run to a tracker as it finishes: mlflow, tensorboard, mlflow=URI or tensorboard=DIR (repeatable; default places under the study).",
        show_default=False,
    ),
]


def tracked(reporter, track: list[str] | None, studies, console):
    """``reporter`` plus a :class:`~ablagen.track.LiveTracker` when ``--track`` was
    given; the trackers are checked (extra installed, place usable) before any run."""
    if not track:
        return reporter
    from rich.markup import escape

    from ablagen.track import LiveTracker, parse_track

    tracker = LiveTracker(
        parse_track(track),
        studies,
        warn=lambda line: console.print(f"[yellow]{escape(line)}[/]", highlight=False),
    )
    tracker.check()

    def both(event) -> None:
        if reporter is not None:
            reporter(event)
        tracker(event)

    return both
