"""Options -> a loaded, analysed model and everything a study's scripts share.

:func:`prepare` loads the model file, traces it once (the inventory), runs one
forward pass (the output width), embeds its source, and resolves the options into
the :class:`~ablagen.generate.request.StudyConfig` the manifest records. The
:class:`Prepared` it returns renders any script of the study; the pipeline hands it
on to the importance-guided arms, so nothing is loaded or traced twice.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass, replace
from typing import Any

import jinja2
import torch

from ablagen import __version__
from ablagen.analyze import Inventory, analyze
from ablagen.generate.command import regenerate_command
from ablagen.generate.context import DataSpec, ModelInfo, ScriptContext
from ablagen.generate.env import make_environment
from ablagen.generate.request import MODES, GenerateOptions, StudyConfig, relative_to
from ablagen.generate.variants import parse_kinds, parse_methods
from ablagen.generate.render import render_script
from ablagen.data import check_task, output_access, resolve_data
from ablagen.data.tasks import check_one_label_per_sample
from ablagen.data.shapes import built_data, count_classes
from ablagen.data.sources import check_fits
from ablagen.data.synthetic import check_synthetic
from ablagen.data.workdir import check_reads_from, user_reads
from ablagen.core.errors import ConfigError
from ablagen.core.spec import split_model_spec
from ablagen.analyze.loading import LoadedModel, load_model
from ablagen.source import embed_model_source


@dataclass(frozen=True)
class Prepared:
    """A loaded, analysed model and everything its scripts share, ready to render."""

    opts: GenerateOptions
    env: jinja2.Environment
    loaded: LoadedModel
    inventory: Inventory
    model: ModelInfo
    config: StudyConfig  # what the manifest records

    @property
    def data(self) -> DataSpec:
        return self.config.data

    @property
    def command(self) -> str:
        return self.config.command

    @functools.cached_property
    def base(self) -> dict[str, Any]:
        """The ScriptContext fields every script of the study shares."""
        return dict(
            ablagen_version=__version__,
            regenerate_command=self.config.command,
            model=self.model,
            data=self.config.data,
            train=self.config.train,
        )

    def render(
        self,
        script_name: str,
        variant_id: str,
        title: str,
        description: tuple[str, ...],
        **fields: Any,
    ) -> bytes:
        """One formatted script; ``fields`` override the shared context (train, ablations, ...)."""
        ctx_fields = {**self.base, "ablations": (), **fields}
        ctx = ScriptContext(
            script_name=script_name,
            variant_id=variant_id,
            title=title,
            description=description,
            **ctx_fields,
        )
        return render_script(self.env, ctx).encode("utf-8")


def prepare(opts: GenerateOptions, command: str | None = None) -> Prepared:
    """Validate the options, load and analyse the model, extract its source.

    ``command`` keeps a study's recorded regenerate command (``ablagen hybrid``);
    by default it is spelled from ``opts``.
    """
    opts.train.validate()
    opts = replace(opts, out=opts.out.resolve())
    if opts.mode not in MODES:
        raise ConfigError(
            f"unknown mode {opts.mode!r}", f"use one of: {', '.join(MODES)}"
        )
    env = make_environment(opts.templates)
    model_file = split_model_spec(opts.model)[0]
    with user_reads(model_file) as reads:  # the model file's code runs here
        loaded = load_model(opts.model, opts.input_shape, opts.dataset)
        _check_channels_last(opts, loaded)
        inventory = analyze(loaded, opts.neuron_groups)
        data, batch = resolve_data(opts, loaded, opts.out)
        model = _model_info(opts, loaded, data, batch)
    check_reads_from(reads, model_file, opts.out)
    config = StudyConfig(
        command=command
        or regenerate_command(replace(opts, dataset=data.spec), model.path),
        kinds=parse_kinds(opts.kinds),
        methods=parse_methods(opts.methods) or (),
        components=opts.components,
        neuron_groups=opts.neuron_groups,
        input_shape=opts.input_shape,
        mode=opts.mode,
        data=data,
        dropout=opts.dropout,
        train=opts.train,
        templates_path=(
            relative_to(opts.templates, opts.out) if opts.templates else None
        ),
    )
    return Prepared(opts, env, loaded, inventory, model, config)


def _check_channels_last(opts: GenerateOptions, loaded: LoadedModel) -> None:
    """--channels-last reorders 4-D (N,C,H,W) tensors: refuse any other input."""
    sample = tuple(loaded.example_inputs[0].shape[1:])  # ModelInfo.sample_shape
    if opts.train.channels_last and len(sample) != 3:
        raise ConfigError(
            f"--channels-last needs image input (N,C,H,W), but one sample of "
            f"{loaded.path} has shape {sample}",
            "drop --channels-last for this model",
        )


def _model_info(
    opts: GenerateOptions,
    loaded: LoadedModel,
    data: DataSpec,
    batch: tuple[torch.Tensor, torch.Tensor] | None,
) -> ModelInfo:
    user_data = ("build_data", "build_datasets", "build_loaders")
    wanted = {loaded.ref.name} | (
        {data.dataset} if data.dataset in user_data else set()
    )
    constants = {}
    if opts.dropout is not None:
        if not 0 <= opts.dropout < 1:
            raise ConfigError(f"bad --dropout {opts.dropout}", "give a rate in [0, 1)")
        if not isinstance(getattr(loaded.module, "DROPOUT", None), float):
            raise ConfigError(
                f"{loaded.path} exposes no DROPOUT constant",
                "define DROPOUT = 0.1 and use it in the model",
            )
        wanted.add("DROPOUT")
        constants["DROPOUT"] = repr(float(opts.dropout))
    embedded = embed_model_source(
        loaded.path, wanted, constants, located=lambda file: relative_to(file, opts.out)
    )
    if batch is None:
        with torch.no_grad():
            output = loaded.model(*loaded.example_inputs)
        where = f"{loaded.path} on its example input"
    else:
        where = f"{loaded.path} on the {data.spec} data"
        output = check_fits(loaded, batch[0], data.spec)
    access = output_access(output, str(loaded.path))
    first = access.prediction
    target = batch[1] if batch is not None else _own_labels(loaded, data)
    check_task(opts.train.task, first, target, where)
    if opts.templates is None:  # the built-in loss (a user's loss.py.j2 may differ)
        check_one_label_per_sample(opts.train.task, first, target, where)
    if data.dataset == "synthetic":
        check_synthetic(opts.train.task, first, loaded.example_inputs[0][0], where)
    classes = (
        len(data.classes)
        if data.classes
        else count_classes(loaded.module, data.dataset)
    )
    if classes and opts.train.task == "classification" and first.shape[-1] < classes:
        raise ConfigError(
            f"{data.spec} has {classes} classes but the model in {loaded.path} "
            f"scores {first.shape[-1]} (every run would fail on a label >= {first.shape[-1]})",
            f"give the model {classes} outputs",
        )
    if data.vocab and first.shape[-1] < len(data.vocab):
        raise ConfigError(
            f"{data.spec} has {len(data.vocab)} tokens but the model in {loaded.path} "
            f"scores {first.shape[-1]}",
            f"give the model's output layer {len(data.vocab)} outputs",
        )
    return ModelInfo(
        path=relative_to(loaded.path, opts.out),
        label=loaded.ref.label,
        sha256=loaded.sha256,
        source=embedded.code,
        expression=loaded.ref.expression,
        sample_shape=tuple(loaded.example_inputs[0].shape[1:]),
        num_outputs=int(first.shape[-1]) if first.dim() else 1,
        target_shape=_target_shape(
            opts.train.task, first, loaded.example_inputs[0], data.dataset
        ),
        output=access.suffix,
        output_note=access.note,
        typed_path=str(loaded.path),
        trace_defaults=_trace_defaults(loaded.model),
    )


def _own_labels(loaded: LoadedModel, data: DataSpec) -> torch.Tensor | None:
    """The labels of the first samples of ``build_data()``, when the example input is
    those samples' shape (so the model's prediction on it pairs with them); None
    where it is not, or where the function fails (every run says so then)."""
    if (
        data.dataset != "build_data"
        or loaded.input_from != "one sample of build_data()"
    ):
        return None
    try:
        labels = torch.as_tensor(built_data(loaded.module)[1])
    except Exception:  # noqa: BLE001 - the scripts report a broken build_data()
        return None
    return labels[: len(loaded.example_inputs[0])]


def _target_shape(
    task: str, prediction: torch.Tensor, example: torch.Tensor, dataset: str
) -> tuple[int, ...]:
    """One sample's synthetic target shape where it is more than a vector: a model that
    maps float inputs to an image or a sequence per sample (super-resolution, a
    segmentation) regresses (or tags) every value of it; () otherwise."""
    per_sample = tuple(prediction.shape[1:])
    if (
        dataset == "synthetic"
        and task in ("regression", "multilabel")
        and example.is_floating_point()
        and len(per_sample) > 1
    ):
        return per_sample
    return ()


def _trace_defaults(model: torch.nn.Module) -> str:
    """forward's defaulted parameters after the input, as a dict literal for torch.fx
    (``{"mask": None}``); "" when there are none or one is not a literal."""
    from ablagen.ablate import forward_defaults  # torch, only when scripts are written

    defaults = forward_defaults(model)
    try:
        if ast.literal_eval(repr(defaults)) == defaults:
            return repr(defaults) if defaults else ""
    except (ValueError, SyntaxError):
        pass
    return ""
