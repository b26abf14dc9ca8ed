"""``ablagen run`` and ``ablagen status``: the orchestrator's commands."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from ablagen.cli.app import app
from ablagen.cli.export import TrackOpt, tracked
from ablagen.cli.flags import (
    BackendOpt,
    CheckpointEveryOpt,
    DeviceOpt,
    GpusOpt,
    GpusPerRunOpt,
    JobsOpt,
    KeepCheckpointsOpt,
    MaxMemoryOpt,
    RayAddressOpt,
    RestartOpt,
    RetryFailedOpt,
    RunsPerGpuOpt,
    StorageOpt,
    TimeoutOpt,
    run_options,
)
from ablagen.orchestrate.options import RunOptions

#: the defaults below are field defaults of RunOptions (stated nowhere else)
_RUN = RunOptions()

StudyArg = Annotated[
    str,
    typer.Argument(
        help="Study directory made by `ablagen generate`.", show_default=False
    ),
]
SeedsOpt = Annotated[
    str | None,
    typer.Option(
        "--seeds",
        help="Comma list (or range) of seeds, e.g. 0,1,2 or 0-4 [default: the manifest's, else 0].",
    ),
]


@app.command()
def run(
    study_dir: StudyArg,
    jobs: JobsOpt = _RUN.jobs,
    seeds: SeedsOpt = None,
    epochs: Annotated[
        int | None,
        typer.Option("--epochs", help="Epochs per run [default: the script's]."),
    ] = None,
    timeout: TimeoutOpt = _RUN.timeout_s,
    backend: BackendOpt = _RUN.backend,
    ray_address: RayAddressOpt = _RUN.ray_address,
    storage: StorageOpt = _RUN.storage,
    cpus_per_run: Annotated[
        float, typer.Option("--cpus-per-run", help="Ray: CPUs per run.")
    ] = 1.0,
    gpus_per_run: GpusPerRunOpt = _RUN.gpus_per_run,
    only: Annotated[
        str | None, typer.Option("--only", help="Comma list of variant ids to run.")
    ] = None,
    retry_failed: RetryFailedOpt = _RUN.retry_failed,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="No progress; print the summary line only."),
    ] = False,
    device: DeviceOpt = _RUN.device,
    track: TrackOpt = None,
    max_memory: MaxMemoryOpt = _RUN.max_memory_gb,
    gpus: GpusOpt = None,
    runs_per_gpu: RunsPerGpuOpt = _RUN.runs_per_gpu,
    keep_checkpoints: KeepCheckpointsOpt = _RUN.keep_checkpoints,
    restart: RestartOpt = _RUN.restart,
    checkpoint_every: CheckpointEveryOpt = _RUN.checkpoint_every,
    no_wait: Annotated[
        bool,
        typer.Option(
            "--no-wait",
            help="Do not wait for runs another orchestrator holds: list them and exit (0 if the rest is ok).",
        ),
    ] = False,
) -> None:
    """Run the study's scripts (resuming: runs already ok are skipped, interrupted
    ones continue from their last mid-run checkpoint). Exit 1 if any run is not ok."""
    from ablagen.orchestrate.local import source_files, warm_pool

    options = run_options(
        jobs=jobs,
        seeds=seeds,
        epochs=epochs,
        timeout=timeout,
        backend=backend,
        ray_address=ray_address,
        storage=storage,
        cpus_per_run=cpus_per_run,
        gpus_per_run=gpus_per_run,
        only=only,
        retry_failed=retry_failed,
        device=device,
        max_memory=max_memory,
        no_wait=no_wait,
        gpus=gpus,
        runs_per_gpu=runs_per_gpu,
        keep_checkpoints=keep_checkpoints,
        restart=restart,
        checkpoint_every=checkpoint_every,
    )
    with warm_pool(
        study_dir, options, source_files(study_dir)
    ) as warm:  # torch imports while we plan
        _run(study_dir, options, quiet, track, warm)


def _run(study_dir: str, options, quiet: bool, track, warm) -> None:
    from rich.console import Console

    from ablagen.orchestrate import run_study
    from ablagen.orchestrate.display import PlainProgress, RichProgress, print_summary

    console = Console(highlight=False)
    reporter = (
        None
        if quiet
        else (
            RichProgress(console) if console.is_terminal else PlainProgress(sys.stdout)
        )
    )
    _warn_if_model_changed(study_dir)
    progress = tracked(reporter, track, [study_dir], console)
    try:
        summary = run_study(study_dir, options, progress=progress, warm=warm)
    except KeyboardInterrupt:
        typer.echo(
            f"interrupted: finished runs are stored; resume with `ablagen run {study_dir}`",
            err=True,
        )
        raise typer.Exit(130) from None
    finally:
        if reporter is not None:
            reporter.close()
    print_summary(summary, console, quiet=quiet)
    if not summary.all_ok:
        raise typer.Exit(1)


@app.command()
def status(
    study_dir: StudyArg,
    seeds: SeedsOpt = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print stable JSON (sorted keys) instead of a table."
        ),
    ] = False,
) -> None:
    """Show each variant's and seed's run status, counts, and what is left to run."""
    from rich.console import Console

    from ablagen.orchestrate import parse_seeds, study_status
    from ablagen.orchestrate.display import print_status

    state = study_status(study_dir, parse_seeds(seeds) if seeds is not None else None)
    _warn_if_model_changed(study_dir)
    if as_json:
        typer.echo(json.dumps(state.to_json(), indent=2, sort_keys=True))
        return
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(width=200, highlight=False)
    print_status(state, console)


def _warn_if_model_changed(study_dir: str) -> None:
    """One warning line on stderr when the model file changed since generate."""
    from ablagen.core.errors import StudyError
    from ablagen.core.studydir import load_manifest, model_changed

    try:
        changed = model_changed(study_dir, load_manifest(study_dir))
    except StudyError:  # the command itself reports a bad study
        return
    if changed:
        typer.echo(f"warning: {changed}", err=True)
