"""Options -> a loaded, analysed model and everything a study's scripts share.

:func:`prepare` loads the model file, traces it once (the inventory), runs one
forward pass (the output width), embeds its source, and resolves the options into
the :class:`~ablagen.codegen.options.StudyConfig` the manifest records. The
:class:`Prepared` it returns renders any script of the study; the pipeline hands it
on to the importance-guided arms, so nothing is loaded or traced twice.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

import jinja2
import torch

from ablagen import __version__
from ablagen.analysis import Inventory, analyze
from ablagen.codegen.command import regenerate_command
from ablagen.codegen.context import (
    DATASETS,
    SKLEARN_DATASETS,
    DataSpec,
    ModelInfo,
    ScriptContext,
)
from ablagen.codegen.env import make_environment
from ablagen.codegen.options import MODES, GenerateOptions, StudyConfig, relative_to
from ablagen.codegen.plan import parse_kinds, parse_methods
from ablagen.codegen.render import render_script
from ablagen.errors import ConfigError
from ablagen.loading import LoadedModel, load_model
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
    loaded = load_model(opts.model, opts.input_shape)
    inventory = analyze(loaded, opts.neuron_groups)
    data = _data_spec(opts, loaded)
    model = _model_info(opts, loaded, data)
    config = StudyConfig(
        command=command or regenerate_command(opts, model.path),
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


def _data_spec(opts: GenerateOptions, loaded: LoadedModel) -> DataSpec:
    dataset = opts.dataset
    if dataset is None:
        default = getattr(loaded.module, "DATASET", None)
        dataset = (
            "build_data"
            if loaded.has_build_data
            else default if isinstance(default, str) else "synthetic"
        )
    if dataset == "file":
        dataset = "build_data"
    if dataset not in DATASETS:
        raise ConfigError(
            f"unknown dataset {dataset!r}", f"use one of: {', '.join(DATASETS)}, file"
        )
    if dataset == "build_data" and not loaded.has_build_data:
        raise ConfigError(
            f"{loaded.path} has no build_data()",
            "define it, or pick a built-in --dataset",
        )
    if not 0 < opts.val_fraction < 1:
        raise ConfigError(
            f"bad --val-fraction {opts.val_fraction}", "give a share in (0, 1)"
        )
    if len(loaded.example_inputs) != 1 and dataset != "build_data":
        raise ConfigError(
            f"{loaded.path}'s model takes {len(loaded.example_inputs)} inputs",
            "the built-in loop feeds one tensor: provide --templates with your own loop",
        )
    sample = loaded.example_inputs[0][0]
    if dataset in SKLEARN_DATASETS:
        features = SKLEARN_DATASETS[dataset][1]
        if sample.numel() != features:
            raise ConfigError(
                f"dataset {dataset} has {features} features per sample but the model takes "
                f"{tuple(sample.shape)} = {sample.numel()} values",
                "pick another --dataset (e.g. synthetic) or fix INPUT_SHAPE",
            )
    token_range = None
    if not sample.is_floating_point():
        vocab = [
            m.num_embeddings
            for m in loaded.model.modules()
            if isinstance(m, torch.nn.Embedding)
        ]
        token_range = min(vocab) if vocab else int(loaded.example_inputs[0].max()) + 1
    return DataSpec(
        dataset, opts.val_fraction, opts.split_seed, token_range=token_range
    )


def _model_info(
    opts: GenerateOptions, loaded: LoadedModel, data: DataSpec
) -> ModelInfo:
    wanted = {loaded.ref.name} | (
        {"build_data"} if data.dataset == "build_data" else set()
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
    embedded = embed_model_source(loaded.path, wanted, constants)
    with torch.no_grad():
        output = loaded.model(*loaded.example_inputs)
    first = output[0] if isinstance(output, (tuple, list)) else output
    return ModelInfo(
        path=relative_to(loaded.path, opts.out),
        label=loaded.ref.label,
        sha256=loaded.sha256,
        source=embedded.code,
        expression=loaded.ref.expression,
        sample_shape=tuple(loaded.example_inputs[0].shape[1:]),
        num_outputs=int(first.shape[-1]) if first.dim() else 1,
    )
