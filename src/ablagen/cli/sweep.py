"""``ablagen sweep``: learning-rate robustness of plain, perturbed, annealed and hybrid training."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ablagen.cli.app import app
from ablagen.cli.flags import (
    AMP_HELP,
    CHANNELS_LAST_HELP,
    COMPILE_HELP,
    GRAD_ACCUM_HELP,
    BackendOpt,
    CheckpointEveryOpt,
    DeviceOpt,
    GpusOpt,
    GpusPerRunOpt,
    KeepCheckpointsOpt,
    JobsOpt,
    RayAddressOpt,
    RetryFailedOpt,
    RunsPerGpuOpt,
    StorageOpt,
    TimeoutOpt,
    run_options,
)
from ablagen.generate.context import TrainConfig
from ablagen.orchestrate.options import RunOptions
from ablagen.sweep.config import ARM_HELP, ARMS, SweepOptions

#: every default below is a field default of these (stated nowhere else)
_SWEEP = SweepOptions(target="")
_RUN = RunOptions()
_TRAIN = TrainConfig()
TRAIN = "Training (unset: the study's own, or the defaults)"

_Int = Annotated[int | None, typer.Option(rich_help_panel=TRAIN)]
_Float = Annotated[float | None, typer.Option(rich_help_panel=TRAIN)]
_Str = Annotated[str | None, typer.Option(rich_help_panel=TRAIN)]


@app.command()
def sweep(
    target: Annotated[
        str,
        typer.Argument(
            help="A model file (model.py[:NAME]) or a study directory (ranked: the hybrid arm too).",
            show_default=False,
        ),
    ],
    lrs: Annotated[
        str,
        typer.Option(
            help="Learning rates: a comma list, or a log range START:STOP:COUNT "
            f"(1e-4:1e-1:7). [default: {', '.join(format(lr, 'g') for lr in _SWEEP.lrs)}]",
            show_default=False,  # the list, with spaces: it wraps at 80 columns
        ),
    ] = ",".join(format(lr, "g") for lr in _SWEEP.lrs),
    arms: Annotated[
        str | None,
        typer.Option(
            help="; ".join(f"{a}: {h}" for a, h in ARM_HELP.items())
            + f". [default: {', '.join(a for a in ARMS if a != 'shuffled')}; hybrid only"
            " for a ranked study; shuffled (ranked too) only when listed]"
        ),
    ] = None,
    sigmas: Annotated[
        str, typer.Option(help="Noise stds of the noisy arms (a second axis).")
    ] = ",".join(format(s, "g") for s in _SWEEP.sigmas),
    seeds: Annotated[str, typer.Option(help="Seeds, e.g. 0-4 or 0,1,2.")] = "0-"
    + str(max(_SWEEP.seeds)),
    noise: Annotated[
        str, typer.Option(help="Noise kind of the noisy arms.")
    ] = _SWEEP.noise,
    metric: Annotated[
        str, typer.Option(help="Final metric to compare (val_acc, val_loss, ...).")
    ] = _SWEEP.metric,
    tolerance: Annotated[
        float,
        typer.Option(help="LR window: within this much of the best (0.01 = 1 point)."),
    ] = _SWEEP.tolerance,
    max_runs: Annotated[
        int, typer.Option(help="Refuse a bigger sweep unless raised explicitly.")
    ] = _SWEEP.max_runs,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Sweep directory [default: STUDY/sweep, or studies/<model stem>/sweep]."
        ),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Model file only: see generate.")
    ] = _SWEEP.dataset,
    epochs: _Int = None,
    batch_size: _Int = None,
    optimizer: Annotated[
        str | None,
        typer.Option(
            rich_help_panel=TRAIN, help="sgd | momentum | adam | adamw | rmsprop"
        ),
    ] = None,
    momentum: _Float = None,
    weight_decay: _Float = None,
    l1: _Float = None,
    grad_clip: _Float = None,
    scheduler: _Str = None,
    step_size: _Int = None,
    gamma: _Float = None,
    warmup_epochs: _Int = None,
    task: _Str = None,
    target_acc: _Float = None,
    patience: _Int = None,
    no_patience: Annotated[
        bool,
        typer.Option(
            "--no-patience", rich_help_panel=TRAIN, help="Turn early stopping off."
        ),
    ] = False,
    amp: Annotated[
        str | None, typer.Option(rich_help_panel=TRAIN, help=AMP_HELP)
    ] = None,
    channels_last: Annotated[
        bool | None, typer.Option(rich_help_panel=TRAIN, help=CHANNELS_LAST_HELP)
    ] = None,
    compile: Annotated[
        bool | None, typer.Option(rich_help_panel=TRAIN, help=COMPILE_HELP)
    ] = None,
    grad_accum: Annotated[
        int | None, typer.Option(rich_help_panel=TRAIN, help=GRAD_ACCUM_HELP)
    ] = None,
    jobs: JobsOpt = _RUN.jobs,
    backend: BackendOpt = _RUN.backend,
    ray_address: RayAddressOpt = _RUN.ray_address,
    storage: StorageOpt = _RUN.storage,
    timeout: TimeoutOpt = _RUN.timeout_s,
    retry_failed: RetryFailedOpt = _RUN.retry_failed,
    device: DeviceOpt = _RUN.device,
    gpus: GpusOpt = None,
    runs_per_gpu: RunsPerGpuOpt = _RUN.runs_per_gpu,
    gpus_per_run: GpusPerRunOpt = _RUN.gpus_per_run,
    checkpoint_every: CheckpointEveryOpt = _RUN.checkpoint_every,
    keep_checkpoints: KeepCheckpointsOpt = _RUN.keep_checkpoints,
    plots: Annotated[bool, typer.Option(help="Write sweep.png.")] = _SWEEP.plots,
    force: Annotated[
        bool, typer.Option(help="Replace a sweep directory of another model.")
    ] = _SWEEP.force,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars.")
    ] = False,
) -> None:
    """Sweep learning rates x arms x seeds; write sweep.json, sweep.png and a report section."""
    from dataclasses import replace

    from rich.console import Console

    from ablagen.orchestrate import parse_seeds
    from ablagen.orchestrate.local import source_files, warm_pool
    from ablagen.orchestrate.display import PlainProgress, RichProgress
    from ablagen.sweep import parse_arms, parse_floats, parse_lrs

    given = dict(
        epochs=epochs, batch_size=batch_size, optimizer=optimizer, momentum=momentum,
        weight_decay=weight_decay, l1=l1, grad_clip=grad_clip, scheduler=scheduler,
        step_size=step_size, gamma=gamma, warmup_epochs=warmup_epochs, task=task,
        target_acc=target_acc, patience=patience, amp=amp, channels_last=channels_last,
        compile=compile, grad_accum=grad_accum,
    )  # fmt: skip
    train: dict[str, object] = {k: v for k, v in given.items() if v is not None}
    if no_patience:
        train["patience"] = None
    opts = SweepOptions(
        target=target,
        lrs=parse_lrs(lrs),
        arms=parse_arms(arms) if arms is not None else None,
        sigmas=parse_floats(sigmas, "--sigmas"),
        seeds=parse_seeds(seeds),
        noise=noise,
        metric=metric,
        tolerance=tolerance,
        max_runs=max_runs,
        out=out,
        train=train,
        dataset=dataset,
        run=run_options(
            jobs=jobs,
            backend=backend,
            ray_address=ray_address,
            storage=storage,
            timeout=timeout,
            retry_failed=retry_failed,
            device=device,
            gpus=gpus,
            runs_per_gpu=runs_per_gpu,
            gpus_per_run=gpus_per_run,
            checkpoint_every=checkpoint_every,
            keep_checkpoints=keep_checkpoints,
        ),
        plots=plots,
        force=force,
    ).validate()
    console = Console(highlight=False)
    progress = (
        None
        if quiet
        else RichProgress(console) if console.is_terminal else PlainProgress(sys.stdout)
    )
    # the pool's workers import torch while this process does (ablagen.sweep.driver)
    run = replace(opts.run, seeds=opts.seeds)
    with warm_pool(out or Path.cwd(), run, source_files(target)) as warm:
        from ablagen.sweep import run_sweep

        try:
            outcome = run_sweep(
                opts,
                step=lambda line: console.print(f"[bold]ablagen sweep[/]: {line}"),
                progress=progress,
                warm=warm,
            )
        finally:
            if progress is not None:
                progress.close()
    _print(outcome, console)
    # a diverged run is a result of the sweep (it scores the worst value), not a failure
    if any(r.status != "diverged" for r in outcome.runs.failures):
        raise typer.Exit(1)


def _print(outcome, console) -> None:
    from rich.table import Table

    result = outcome.result
    table = Table(title=f"learning-rate robustness ({result.metric}, {result.unit})")
    for column in (
        "arm",
        "best lr",
        "best",
        "LR window (dec)",
        "worst drop",
        "seed var",
    ):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for s in result.series:
        cells = []
        for name in ("lr_window_decades", "worst_case_drop", "seed_variance"):
            fig = s.figures.get(name)
            cell = "n/a" if fig is None else f"{fig.estimate.value:.3g}"
            if (
                fig is not None
                and fig.vs_plain is not None
                and fig.vs_plain.p_value is not None
            ):
                cell += f" (p {fig.vs_plain.p_value:.2f})"
            cells.append(cell)
        best = "n/a" if s.best is None else f"{s.best.value * result.scale:.2f}"
        table.add_row(
            s.label, "n/a" if s.best_lr is None else f"{s.best_lr:g}", best, *cells
        )
    console.print(table)
    console.print(f"wrote {', '.join(str(f) for f in outcome.files)}")
