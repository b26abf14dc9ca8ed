"""``ablagen hybrid`` and ``ablagen study``: importance-guided training and the main job."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from ablagen.cli.app import app
from ablagen.cli.export import TrackOpt, tracked
from ablagen.cli.flags import (
    AmpOpt,
    BackendOpt,
    JobsOpt,
    MaxMemoryOpt,
    ChannelsLastOpt,
    CheckpointEveryOpt,
    CompileOpt,
    DeviceOpt,
    GpusOpt,
    GpusPerRunOpt,
    BatchSizeOpt,
    ComponentsOpt,
    DropoutOpt,
    GradAccumOpt,
    InputShapeOpt,
    SplitSeedOpt,
    TemplatesOpt,
    ValFractionOpt,
    WeightDecayOpt,
    component_ids,
    KeepCheckpointsOpt,
    ModelArg,
    NeuronGroupsOpt,
    RayAddressOpt,
    RunsPerGpuOpt,
    StorageOpt,
    run_options,
)
from ablagen.generate.request import GenerateOptions
from ablagen.orchestrate.options import RunOptions
from ablagen.study.options import (
    STUDY_TRAIN,
    ArmOptions,
    RankOptions,
    StudyOptions,
)

#: every default below is a field default of these (stated nowhere else)
_ARMS = ArmOptions()
_GEN = GenerateOptions(model="", out=Path())
_RANK = RankOptions()
_RUN = RunOptions()
_STUDY = StudyOptions(generate=_GEN)


def _seed_list(seeds: tuple[int, ...]) -> str:
    return ",".join(map(str, seeds))


ARMS = "Importance-guided arms"


SigmaOpt = Annotated[
    float,
    typer.Option(
        rich_help_panel=ARMS, help="Base noise std of the perturbed and hybrid arms."
    ),
]
NoiseOpt = Annotated[
    str, typer.Option(rich_help_panel=ARMS, help="Noise kind of those arms.")
]
BottomOpt = Annotated[
    int,
    typer.Option(
        rich_help_panel=ARMS,
        help="Components the ablated arm removes (the least important).",
    ),
]
MatchOpt = Annotated[
    bool,
    typer.Option(
        rich_help_panel=ARMS,
        help="Rescale the hybrid's noise scales to the perturbed arm's total noise energy.",
    ),
]


@app.command()
def hybrid(
    study_dir: Annotated[
        Path,
        typer.Argument(
            help="A ranked study (run `ablagen rank` first).", show_default=False
        ),
    ],
    sigma: SigmaOpt = _ARMS.sigma,
    noise: NoiseOpt = _ARMS.noise,
    ablate_bottom: BottomOpt = _ARMS.ablate_bottom,
    match_noise: MatchOpt = _ARMS.match_noise,
) -> None:
    """Write hybrid.py (importance-guided noise), shuffled.py (its scales permuted), perturbed.py (uniform noise) and ablated.py."""
    from ablagen.arms.hybrid import ARMS as FILES
    from ablagen.arms.hybrid import write_arms

    manifest = write_arms(
        study_dir,
        ArmOptions(
            sigma=sigma,
            noise=noise,
            ablate_bottom=ablate_bottom,
            match_noise=match_noise,
        ),
    )
    arms = [v for v in manifest.variants if v.kind == "arm"]
    typer.echo(f"wrote {', '.join(FILES[a.id] for a in arms)} into {study_dir}")
    ids = ",".join(["baseline", *(a.id for a in arms)])
    typer.echo(f"run them with: ablagen run {study_dir} --only {ids} --seeds 0-4")


@app.command()
def study(
    ctx: typer.Context,
    model: ModelArg,
    out: Annotated[
        Path | None,
        typer.Option(help="Study directory (default: studies/<model file stem>)."),
    ] = None,
    mode: Annotated[
        str,
        typer.Option(
            help="retrain: train every variant | knockout: ablate a trained baseline | screen: estimate every ablation from gradients | two-stage: screen, then verify the top ones."
        ),
    ] = _GEN.mode,
    screen: Annotated[
        str,
        typer.Option(
            help="two-stage: taylor (gradient estimates, screen.py) | knockout (exact, knockout.py)."
        ),
    ] = _STUDY.screen,
    verify: Annotated[
        str,
        typer.Option(
            help="two-stage: knockout (exact, on one trained model) | retrain (each variant trained)."
        ),
    ] = _STUDY.verify,
    retrain_top: Annotated[
        int,
        typer.Option(
            help="two-stage: verify the K most important and the K most uncertain."
        ),
    ] = _STUDY.retrain_top,
    seeds: Annotated[
        str, typer.Option(help="Seeds of the ablation runs.")
    ] = _seed_list(_STUDY.seeds),
    arm_seeds: Annotated[
        str, typer.Option(help="Seeds of the arms (the baseline's too).")
    ] = _seed_list(_STUDY.arm_seeds),
    jobs: JobsOpt = _RUN.jobs,
    kinds: Annotated[
        str | None, typer.Option(help="Component kinds to ablate (see generate).")
    ] = _GEN.kinds,
    methods: Annotated[
        str | None, typer.Option(help="Ablation methods (see generate).")
    ] = _GEN.methods,
    neuron_groups: NeuronGroupsOpt = _GEN.neuron_groups,
    components: ComponentsOpt = None,
    input_shape: InputShapeOpt = _GEN.input_shape,
    val_fraction: ValFractionOpt = _GEN.val_fraction,
    split_seed: SplitSeedOpt = _GEN.split_seed,
    dropout: DropoutOpt = _GEN.dropout,
    templates: TemplatesOpt = _GEN.templates,
    dataset: Annotated[str | None, typer.Option(help="See generate.")] = _GEN.dataset,
    target: Annotated[str | None, typer.Option(help="See generate.")] = _GEN.target,
    image_size: Annotated[
        str | None, typer.Option(help="See generate.")
    ] = _GEN.image_size,
    tokenizer: Annotated[
        str | None, typer.Option(help="See generate.")
    ] = _GEN.tokenizer,
    num_workers: Annotated[
        int | None, typer.Option(help="See generate.")
    ] = _GEN.num_workers,
    task: Annotated[
        str,
        typer.Option(
            help="classification | regression | multilabel | tokens | lm (lm ranks by val_ppl unless --metric is given)."
        ),
    ] = STUDY_TRAIN.task,
    epochs: Annotated[
        int,
        typer.Option(help="Epochs per run (a study trains longer than generate's 5)."),
    ] = STUDY_TRAIN.epochs,
    batch_size: BatchSizeOpt = STUDY_TRAIN.batch_size,
    lr: Annotated[float, typer.Option()] = STUDY_TRAIN.lr,
    weight_decay: WeightDecayOpt = STUDY_TRAIN.weight_decay,
    optimizer: Annotated[str, typer.Option()] = STUDY_TRAIN.optimizer,
    scheduler: Annotated[
        str,
        typer.Option(
            help="none | step | exponential | cosine | cyclic | warmup (generate's default: none)."
        ),
    ] = STUDY_TRAIN.scheduler,
    patience: Annotated[
        int | None,
        typer.Option(
            help="Early stopping patience in epochs (generate's default: off)."
        ),
    ] = STUDY_TRAIN.patience,
    amp: AmpOpt = STUDY_TRAIN.amp,
    channels_last: ChannelsLastOpt = STUDY_TRAIN.channels_last,
    compile: CompileOpt = STUDY_TRAIN.compile,
    grad_accum: GradAccumOpt = STUDY_TRAIN.grad_accum,
    metric: Annotated[
        str, typer.Option(help="Metric the ranking uses.")
    ] = _RANK.metric,
    sigma: SigmaOpt = _ARMS.sigma,
    noise: NoiseOpt = _ARMS.noise,
    ablate_bottom: BottomOpt = _ARMS.ablate_bottom,
    match_noise: MatchOpt = _ARMS.match_noise,
    arms: Annotated[
        bool, typer.Option(help="Train the arms after ranking.")
    ] = _STUDY.with_arms,
    backend: BackendOpt = _RUN.backend,
    ray_address: RayAddressOpt = _RUN.ray_address,
    storage: StorageOpt = _RUN.storage,
    max_memory: MaxMemoryOpt = _RUN.max_memory_gb,
    device: DeviceOpt = _RUN.device,
    gpus: GpusOpt = None,
    runs_per_gpu: RunsPerGpuOpt = _RUN.runs_per_gpu,
    gpus_per_run: GpusPerRunOpt = _RUN.gpus_per_run,
    checkpoint_every: CheckpointEveryOpt = _RUN.checkpoint_every,
    keep_checkpoints: KeepCheckpointsOpt = _RUN.keep_checkpoints,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars.")
    ] = False,
    track: TrackOpt = None,
) -> None:
    """The main job: generate, run, rank, noise scales, the five arms, report."""
    from rich.console import Console

    from ablagen.core.spec import split_model_spec
    from ablagen.orchestrate import parse_seeds
    from ablagen.orchestrate.display import PlainProgress, RichProgress
    from ablagen.orchestrate.local import source_files, warm_pool

    train = replace(
        STUDY_TRAIN,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        optimizer=optimizer,
        scheduler=scheduler,
        patience=patience,
        task=task,
        amp=amp,
        channels_last=channels_last,
        compile=compile,
        grad_accum=grad_accum,
    )
    if metric == _RANK.metric and task in ("lm", "regression"):
        # these tasks have no accuracy
        metric = "val_ppl" if task == "lm" else "val_loss"
    generate = GenerateOptions(
        model=model,
        out=out or Path("studies") / split_model_spec(model)[0].stem,
        kinds=kinds,
        methods=methods,
        neuron_groups=neuron_groups,
        components=component_ids(components),
        input_shape=input_shape,
        val_fraction=val_fraction,
        split_seed=split_seed,
        dropout=dropout,
        templates=templates,
        mode=mode,
        dataset=dataset,
        target=target,
        image_size=image_size,
        tokenizer=tokenizer,
        num_workers=num_workers,
        train=train,
    )
    opts = StudyOptions(
        generate=generate,
        seeds=parse_seeds(seeds),
        arm_seeds=parse_seeds(arm_seeds),
        run=run_options(
            jobs=jobs,
            backend=backend,
            ray_address=ray_address,
            storage=storage,
            max_memory=max_memory,
            device=device,
            gpus=gpus,
            runs_per_gpu=runs_per_gpu,
            gpus_per_run=gpus_per_run,
            checkpoint_every=checkpoint_every,
            keep_checkpoints=keep_checkpoints,
        ),
        arms=ArmOptions(
            sigma=sigma,
            noise=noise,
            ablate_bottom=ablate_bottom,
            match_noise=match_noise,
        ),
        rank=RankOptions(metric=metric),
        with_arms=arms,
        retrain_top=retrain_top,
        screen=screen,
        verify=verify,
    )
    console = Console(highlight=False)
    progress = (
        None
        if quiet
        else RichProgress(console) if console.is_terminal else PlainProgress(sys.stdout)
    )
    # the pool's workers import torch (and the model file's imports) while this
    # process does (ablagen.study.pipeline)
    with warm_pool(generate.out, opts.run, source_files(model)) as warm:
        from ablagen.study.pipeline import (
            check_screen_metric,
            run_full_study,
            stage_dirs,
        )

        given = getattr(ctx.get_parameter_source("metric"), "name", "DEFAULT")
        check_screen_metric(mode, screen, None if given == "DEFAULT" else metric)
        studies = list(stage_dirs(opts)) if mode == "two-stage" else [generate.out]
        callback = tracked(progress, track, studies, console)
        try:
            outcome = run_full_study(
                opts,
                step=lambda line: console.print(f"[bold]ablagen study[/]: {line}"),
                progress=callback,
                warm=warm,
            )
        finally:
            if progress is not None:
                progress.close()
    _print_outcome(outcome, console)
    failures = outcome.ablation_runs.failures + (
        outcome.arm_runs.failures if outcome.arm_runs else ()
    )
    if failures:
        raise typer.Exit(1)


def _print_outcome(outcome, console) -> None:
    from rich.table import Table

    from ablagen.report.html import REPORT_HTML

    rows = outcome.ranking.ranking.rows
    console.print(
        f"\nmost important: {', '.join(r.variant for r in rows[:3]) or 'none ranked'}"
    )
    if outcome.arms:
        table = Table(title="the arms (final validation metrics over seeds)")
        for column in (
            "arm",
            "seeds",
            "val acc",
            "val loss",
            "epochs to target",
            "params",
        ):
            table.add_column(column, justify="left" if column == "arm" else "right")
        for arm in outcome.arms:
            ett = (
                "never"
                if arm.epochs_to_target is None
                else f"{arm.epochs_to_target:.2f} ({arm.reached}/{len(arm.seeds)})"
            )
            table.add_row(
                arm.arm,
                str(len(arm.seeds)),
                f"{arm.val_acc[0]:.4f} ± {arm.val_acc[1]:.4f}",
                f"{arm.val_loss[0]:.4f} ± {arm.val_loss[1]:.4f}",
                ett,
                f"{arm.params_effective:,}",
            )
        console.print(table)
    html = outcome.report.with_name(REPORT_HTML)
    console.print(f"report: {outcome.report} and {html}")
