"""The CLI spelling of a study: the ``ablagen generate`` command that regenerates it.

Only options that differ from their defaults are spelled, so the command stays short
and the defaults (the :class:`GenerateOptions` and :class:`TrainConfig` field
defaults, which the CLI uses too) are stated nowhere else.
"""

from __future__ import annotations

import shlex
from dataclasses import fields
from pathlib import Path
from typing import Any

from ablagen.generate.context import TrainConfig
from ablagen.generate.request import GenerateOptions, relative_to
from ablagen.core.spec import split_model_spec

#: GenerateOptions fields spelled ``--field-name VALUE`` when not at their default
FLAG_FIELDS = (
    "kinds",
    "methods",
    "neuron_groups",
    "input_shape",
    "mode",
    "dataset",
    "target",
    "image_size",
    "tokenizer",
    "num_workers",
    "val_fraction",
    "split_seed",
    "dropout",
)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _words(name: str, value: Any) -> list[str]:
    if value is True:
        return [_flag(name)]
    if value is False:
        return [f"--no-{name.replace('_', '-')}"]
    return [_flag(name), str(value)]


def regenerate_command(opts: GenerateOptions, model_rel: str) -> str:
    """The command that regenerates the study, run from inside the study directory."""
    _, name = split_model_spec(opts.model)
    words = ["ablagen", "generate", model_rel + (f":{name}" if name else "")]
    words += ["--out", "."]
    defaults = GenerateOptions(model="", out=Path("."))
    for key in FLAG_FIELDS:
        value = getattr(opts, key)
        if value != getattr(defaults, key):
            words += _words(key, value)
    for comp in opts.components:
        words += ["--components", comp]
    base = TrainConfig()
    for f in fields(TrainConfig):
        value = getattr(opts.train, f.name)
        if value != getattr(base, f.name):
            words += _words(f.name, value)
    if opts.templates is not None:
        words += ["--templates", relative_to(opts.templates, opts.out)]
    return shlex.join(words)
