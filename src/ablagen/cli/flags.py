"""Option types shared by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from ablagen.orchestrate.options import RunOptions

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
DatasetOpt = Annotated[
    str | None,
    typer.Option(
        help="digits | wine | breast_cancer | synthetic | build_data (or file) | build_datasets | build_loaders | folder:DIR | csv:FILE | text:FILE. [default: the model file's build_data(), build_datasets() or build_loaders(), else its DATASET, else synthetic]"
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
ComponentsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--components",
        help="Only these ids (ID or ID:METHOD), comma-separated or repeated.",
    ),
]
ValFractionOpt = Annotated[
    float, typer.Option(help="Built-in data: share held out for validation.")
]
SplitSeedOpt = Annotated[
    int,
    typer.Option(
        help="Seed of the train/validation split (the same for every variant)."
    ),
]
DropoutOpt = Annotated[
    float | None, typer.Option(help="Override the model file's DROPOUT constant.")
]
TemplatesOpt = Annotated[
    Path | None,
    typer.Option(help="Your templates directory, searched before the built-ins."),
]
#: the panel of the training options in --help
TRAIN = "Training (written into every script's config block)"
BatchSizeOpt = Annotated[
    int, typer.Option(rich_help_panel=TRAIN, help="Samples per optimizer step.")
]
WeightDecayOpt = Annotated[
    float, typer.Option(rich_help_panel=TRAIN, help="L2 penalty.")
]


def component_ids(components: list[str] | None) -> tuple[str, ...]:
    """``--components a,b --components c`` -> ``("a", "b", "c")``."""
    return tuple(i.strip() for c in components or () for i in c.split(",") if i.strip())


# -- where the runs go and what they save: `ablagen run`, `study` and `sweep` ---------
# (defaults at each use: the RunOptions field of the same name; run_options() below
# turns a command's flags into RunOptions)
JobsOpt = Annotated[
    int | None,
    typer.Option("--jobs", "-j", help="Runs at once [default: one per CPU core]."),
]
BackendOpt = Annotated[
    str, typer.Option("--backend", help="Where runs execute: local or ray.")
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option("--ray-address", help="Join this Ray cluster (HOST:PORT or auto)."),
]
StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="Ray: a folder every node reaches (path, s3://, gs://...) for checkpoints and results.",
    ),
]
TimeoutOpt = Annotated[
    float | None, typer.Option("--timeout", help="Seconds before a run is killed.")
]
RetryFailedOpt = Annotated[
    bool,
    typer.Option(
        "--retry-failed", help="Rerun failed, diverged, timed-out and crashed runs."
    ),
]
MaxMemoryOpt = Annotated[
    float | None,
    typer.Option(
        "--max-memory",
        help="GB of memory per run; a run past it is killed and recorded as oom (0: no limit)"
        " [default: 80% of the machine's memory / --jobs; ray: no limit].",
        show_default=False,
    ),
]

#: a run flag whose RunOptions field has another name
_RUN_FIELDS = {"timeout": "timeout_s", "max_memory": "max_memory_gb"}


def run_options(**flags: Any) -> RunOptions:
    """The RunOptions of a command's run flags, given by flag name: the one place
    they are parsed (``--seeds``, ``--only``, ``--gpus``) and named as fields
    (``--timeout``, ``--max-memory``, ``--no-wait``); a flag left out keeps the
    field's default."""
    from ablagen.orchestrate.options import RunOptions, parse_ids, parse_seeds
    from ablagen.orchestrate.placement import parse_gpus

    parsers = {"seeds": parse_seeds, "only": parse_ids, "gpus": parse_gpus}
    if flags.get("storage") and flags.get("backend") == "ray":  # before Ray starts
        from ablagen.orchestrate.ray_backend import check_storage

        flags["storage"] = check_storage(flags["storage"])
    fields: dict[str, Any] = {}
    for flag, value in flags.items():
        if flag == "no_wait":
            fields["wait"] = not value
            continue
        if flag in parsers and value is not None:
            value = parsers[flag](value)
        fields[_RUN_FIELDS.get(flag, flag)] = value
    return RunOptions(**fields)


DEVICES = "Devices and checkpoints"

DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device", rich_help_panel=DEVICES, help="cpu or cuda, passed to every script."
    ),
]
GpusOpt = Annotated[
    str | None,
    typer.Option(
        "--gpus",
        rich_help_panel=DEVICES,
        help="Local, with --device cuda: comma list of GPU indices the runs are spread over"
        " (each run sees one, via CUDA_VISIBLE_DEVICES) (default: every visible GPU).",
        show_default=False,
    ),
]
RunsPerGpuOpt = Annotated[
    int,
    typer.Option(
        "--runs-per-gpu",
        rich_help_panel=DEVICES,
        help="Local, with --device cuda: most runs one GPU holds at once; --jobs defaults to GPUs x this.",
    ),
]
GpusPerRunOpt = Annotated[
    float,
    typer.Option(
        "--gpus-per-run",
        rich_help_panel=DEVICES,
        help="Ray: GPUs per run; a fraction shares a GPU (0.5: two runs per GPU, 0.25: four).",
    ),
]
CheckpointEveryOpt = Annotated[
    int | None,
    typer.Option(
        "--checkpoint-every",
        rich_help_panel=DEVICES,
        help="Epochs between mid-run checkpoints (0: none) (default: the script's, every epoch).",
        show_default=False,
    ),
]
KeepCheckpointsOpt = Annotated[
    bool,
    typer.Option(
        "--keep-checkpoints",
        rich_help_panel=DEVICES,
        help="Keep each finished run's mid-run checkpoint (runs/...) instead of deleting it.",
    ),
]
RestartOpt = Annotated[
    bool,
    typer.Option(
        "--restart",
        rich_help_panel=DEVICES,
        help="Runs that start drop their mid-run checkpoint and train from epoch 1.",
    ),
]

# -- the accelerator training options: `ablagen generate`, `study` and `sweep` --------
# (defaults at each use: the TrainConfig field of the same name)
ACCEL = "Accelerators (each adds its code to the scripts only when set)"
AMP_HELP = "Mixed precision: none | bf16 | fp16 (fp16: CUDA, with a GradScaler)."
CHANNELS_LAST_HELP = "Image models (N,C,H,W input): channels-last memory."
COMPILE_HELP = "torch.compile the model after the ablation."
GRAD_ACCUM_HELP = "Micro-batches of --batch-size per optimizer step (and noise draw)."

AmpOpt = Annotated[str, typer.Option(rich_help_panel=ACCEL, help=AMP_HELP)]
ChannelsLastOpt = Annotated[
    bool, typer.Option(rich_help_panel=ACCEL, help=CHANNELS_LAST_HELP)
]
CompileOpt = Annotated[bool, typer.Option(rich_help_panel=ACCEL, help=COMPILE_HELP)]
GradAccumOpt = Annotated[int, typer.Option(rich_help_panel=ACCEL, help=GRAD_ACCUM_HELP)]
