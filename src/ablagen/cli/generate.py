"""``ablagen generate``: one standalone, black-formatted script per ablated variant."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ablagen.cli.app import app
from ablagen.cli.flags import (
    TRAIN,
    AmpOpt,
    BatchSizeOpt,
    ChannelsLastOpt,
    CompileOpt,
    ComponentsOpt,
    DatasetOpt,
    DropoutOpt,
    GradAccumOpt,
    InputShapeOpt,
    ModelArg,
    NeuronGroupsOpt,
    SplitSeedOpt,
    TemplatesOpt,
    ValFractionOpt,
    WeightDecayOpt,
    component_ids,
)
from ablagen.generate.context import TrainConfig
from ablagen.generate.request import GenerateOptions

#: every default below is a field default of these (stated nowhere else)
_GEN = GenerateOptions(model="", out=Path())
_TRAIN = TrainConfig()

NOISE = "Gradient noise (the perturbed update equations)"


@app.command()
def generate(
    model: ModelArg,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Study directory (default: generated/<model file stem>)."
        ),
    ] = None,
    kinds: Annotated[
        str | None,
        typer.Option(
            help="Component kinds to ablate, comma-separated: layers, blocks, activations, neurons. [default: layers, blocks, activations]"
        ),
    ] = _GEN.kinds,
    components: ComponentsOpt = None,
    methods: Annotated[
        str | None,
        typer.Option(
            help="Methods, comma-separated: identity, zero, mean, mask; each component gets those it accepts. [default: identity where shapes allow, else zero; mask for neurons]"
        ),
    ] = _GEN.methods,
    neuron_groups: NeuronGroupsOpt = _GEN.neuron_groups,
    input_shape: InputShapeOpt = _GEN.input_shape,
    mode: Annotated[
        str,
        typer.Option(
            help="retrain: train every variant | knockout: train once, ablate at evaluation | screen: train once, estimate every ablation from gradients."
        ),
    ] = _GEN.mode,
    dataset: DatasetOpt = _GEN.dataset,
    target: Annotated[
        str | None, typer.Option(help="csv:FILE: the target column.")
    ] = _GEN.target,
    image_size: Annotated[
        str | None,
        typer.Option(
            help="folder:DIR: resize images to SIZE or HEIGHT,WIDTH. [default: the model's input]"
        ),
    ] = _GEN.image_size,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            help="text:FILE: byte (every byte a token) | word (split on whitespace). [default: byte]"
        ),
    ] = _GEN.tokenizer,
    num_workers: Annotated[
        int | None,
        typer.Option(
            help="Streamed data: DataLoader workers. [default: min(4, CPUs / 2), decided when the script runs]"
        ),
    ] = _GEN.num_workers,
    val_fraction: ValFractionOpt = _GEN.val_fraction,
    split_seed: SplitSeedOpt = _GEN.split_seed,
    dropout: DropoutOpt = _GEN.dropout,
    epochs: Annotated[int, typer.Option(rich_help_panel=TRAIN)] = _TRAIN.epochs,
    batch_size: BatchSizeOpt = _TRAIN.batch_size,
    lr: Annotated[float, typer.Option(rich_help_panel=TRAIN)] = _TRAIN.lr,
    optimizer: Annotated[
        str,
        typer.Option(
            rich_help_panel=TRAIN, help="sgd | momentum | adam | adamw | rmsprop"
        ),
    ] = _TRAIN.optimizer,
    momentum: Annotated[float, typer.Option(rich_help_panel=TRAIN)] = _TRAIN.momentum,
    weight_decay: WeightDecayOpt = _TRAIN.weight_decay,
    l1: Annotated[
        float, typer.Option(rich_help_panel=TRAIN, help="L1 penalty added to the loss.")
    ] = _TRAIN.l1,
    grad_clip: Annotated[
        float,
        typer.Option(rich_help_panel=TRAIN, help="Max global gradient norm (0: off)."),
    ] = _TRAIN.grad_clip,
    scheduler: Annotated[
        str,
        typer.Option(
            rich_help_panel=TRAIN,
            help="none | step | exponential | cosine | cyclic | warmup",
        ),
    ] = _TRAIN.scheduler,
    step_size: Annotated[
        int,
        typer.Option(rich_help_panel=TRAIN, help="step scheduler: epochs per decay."),
    ] = _TRAIN.step_size,
    gamma: Annotated[
        float,
        typer.Option(rich_help_panel=TRAIN, help="step / exponential decay factor."),
    ] = _TRAIN.gamma,
    warmup_epochs: Annotated[
        int, typer.Option(rich_help_panel=TRAIN)
    ] = _TRAIN.warmup_epochs,
    task: Annotated[
        str,
        typer.Option(
            rich_help_panel=TRAIN,
            help="classification | regression | multilabel | tokens | lm",
        ),
    ] = _TRAIN.task,
    target_ppl: Annotated[
        float,
        typer.Option(
            rich_help_panel=TRAIN, help="lm: perplexity for 'epochs to target'."
        ),
    ] = _TRAIN.target_ppl,
    ignore_index: Annotated[
        int,
        typer.Option(
            rich_help_panel=TRAIN, help="tokens / lm: target value not scored."
        ),
    ] = _TRAIN.ignore_index,
    target_acc: Annotated[
        float,
        typer.Option(rich_help_panel=TRAIN, help="Accuracy for 'epochs to target'."),
    ] = _TRAIN.target_acc,
    stop_at_target: Annotated[
        bool, typer.Option(rich_help_panel=TRAIN)
    ] = _TRAIN.stop_at_target,
    patience: Annotated[
        int | None,
        typer.Option(
            rich_help_panel=TRAIN,
            help="Early stopping: epochs without val-loss gain. [default: off]",
        ),
    ] = _TRAIN.patience,
    amp: AmpOpt = _TRAIN.amp,
    channels_last: ChannelsLastOpt = _TRAIN.channels_last,
    compile: CompileOpt = _TRAIN.compile,
    grad_accum: GradAccumOpt = _TRAIN.grad_accum,
    noise: Annotated[
        str,
        typer.Option(
            rich_help_panel=NOISE, help="Noise kind, e.g. gaussian, uniform, laplace."
        ),
    ] = _TRAIN.noise,
    sigma: Annotated[
        float,
        typer.Option(
            rich_help_panel=NOISE, help="Base noise std (0: plain optimizer)."
        ),
    ] = _TRAIN.sigma,
    noise_schedule: Annotated[
        str, typer.Option(rich_help_panel=NOISE)
    ] = _TRAIN.noise_schedule,
    templates: TemplatesOpt = _GEN.templates,
    force: Annotated[
        bool, typer.Option(help="Replace a study of another model file.")
    ] = _GEN.force,
) -> None:
    """Write a study directory: baseline.py, one script per variant, manifest.json."""
    from ablagen.generate.build import generate_study
    from ablagen.core.spec import split_model_spec

    train = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, momentum=momentum,
        weight_decay=weight_decay, l1=l1, grad_clip=grad_clip, scheduler=scheduler,
        step_size=step_size, gamma=gamma, warmup_epochs=warmup_epochs, noise=noise, sigma=sigma,
        noise_schedule=noise_schedule, task=task, target_acc=target_acc, target_ppl=target_ppl,
        ignore_index=ignore_index, stop_at_target=stop_at_target, patience=patience,
        amp=amp, channels_last=channels_last, compile=compile, grad_accum=grad_accum,
    )  # fmt: skip
    opts = GenerateOptions(
        model=model,
        out=out or Path("generated") / split_model_spec(model)[0].stem,
        kinds=kinds,
        components=component_ids(components),
        methods=methods,
        neuron_groups=neuron_groups,
        input_shape=input_shape,
        mode=mode,
        dataset=dataset,
        target=target,
        image_size=image_size,
        tokenizer=tokenizer,
        num_workers=num_workers,
        val_fraction=val_fraction,
        split_seed=split_seed,
        dropout=dropout,
        train=train,
        templates=templates,
        force=force,
    )
    study = generate_study(opts)
    if study.prepared.loaded.input_note:
        typer.echo(f"note: {study.prepared.loaded.input_note}", err=True)
    for warning in study.warnings:
        typer.echo(f"warning: {warning}", err=True)
    variants = len(study.manifest.variants) - 1
    scripts = sorted({v.script for v in study.manifest.variants})
    if opts.mode in ("knockout", "screen"):
        verb = "scores" if opts.mode == "knockout" else "estimates"
        typer.echo(
            f"wrote {study.out}: baseline.py, {opts.mode}.py ({verb} {variants} variants), manifest.json"
        )
    else:
        typer.echo(
            f"wrote {study.out}: baseline.py + {len(scripts) - 1} variant scripts + manifest.json"
        )
