"""What ``ablagen generate`` is asked for, and what a study records of it.

:class:`GenerateOptions` is the request (its field defaults are the CLI's defaults);
:class:`StudyConfig` is the resolved request as ``manifest.json`` records it under
``"config"``. ``StudyConfig`` writes itself (:meth:`StudyConfig.to_manifest`) and reads
itself back (:meth:`StudyConfig.from_manifest`); later commands (``ablagen hybrid``)
get the options that regenerate a study from :meth:`StudyConfig.options`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablagen.generate.context import DataSpec, TrainConfig

MODES = ("retrain", "knockout", "screen")

_DATA = DataSpec(dataset="synthetic")  # the split's defaults live on DataSpec


@dataclass(frozen=True)
class GenerateOptions:
    """Options of :func:`ablagen.generate.build.generate_study`; every field but
    ``model`` and ``out`` has a CLI flag whose default is the field's default."""

    model: str  # path.py[:NAME]
    out: Path
    kinds: str | None = None  # None: layers, blocks, activations
    components: tuple[str, ...] = ()
    methods: str | None = None  # None: each component's default method
    neuron_groups: int | None = None
    input_shape: str | None = None
    mode: str = "retrain"
    # None: build_data() if the file has it, else its DATASET, else synthetic
    dataset: str | None = None  # also folder:DIR, csv:FILE, text:FILE
    target: str | None = None  # csv: the target column
    image_size: str | None = None  # folder: "32" or "24,32" (default: the model's input)
    tokenizer: str | None = None  # text: byte (default) | word
    num_workers: int | None = None  # streamed data: None picks one for the machine
    val_fraction: float = _DATA.val_fraction
    split_seed: int = _DATA.split_seed
    dropout: float | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    templates: Path | None = None
    force: bool = False


def relative_to(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` in POSIX form (both resolved)."""
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


@dataclass(frozen=True)
class StudyConfig:
    """The ``"config"`` section of ``manifest.json``: the study's resolved options."""

    command: str  # regenerates the study, run from inside its directory
    kinds: tuple[str, ...]
    methods: tuple[str, ...]  # empty: each component's default method
    components: tuple[str, ...]
    neuron_groups: int | None
    input_shape: str | None
    mode: str
    data: DataSpec
    dropout: float | None
    train: TrainConfig
    templates_path: str | None  # relative to the study directory

    @property
    def custom_templates(self) -> bool:
        return self.templates_path is not None

    def to_manifest(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "kinds": list(self.kinds),
            "methods": list(self.methods),
            "components": list(self.components),
            "neuron_groups": self.neuron_groups,
            "input_shape": self.input_shape,
            "mode": self.mode,
            "data": self.data.to_manifest(),
            "dropout": self.dropout,
            "train": self.train.to_manifest(),
            "custom_templates": self.custom_templates,
            "templates_path": self.templates_path,
        }

    @classmethod
    def from_manifest(cls, config: dict[str, Any]) -> StudyConfig:
        """Read back what :meth:`to_manifest` wrote (KeyError/TypeError if it is not that)."""
        return cls(
            command=config["command"],
            kinds=tuple(config["kinds"]),
            methods=tuple(config["methods"]),
            components=tuple(config["components"]),
            neuron_groups=config["neuron_groups"],
            input_shape=config["input_shape"],
            mode=config["mode"],
            data=DataSpec.from_manifest(config["data"]),
            dropout=config["dropout"],
            train=TrainConfig.from_manifest(config["train"]),
            templates_path=config["templates_path"],
        )

    def options(
        self, study: Path, model: str, out: Path | None = None
    ) -> GenerateOptions:
        """The generate options that make this study again in ``study`` (``out``:
        scripts written elsewhere, such as ``STUDY/prune``, whose paths start there)."""
        return GenerateOptions(
            model=model,
            out=out or study,
            kinds=",".join(self.kinds),
            components=self.components,
            methods=",".join(self.methods) or None,
            neuron_groups=self.neuron_groups,
            input_shape=self.input_shape,
            mode=self.mode,
            dataset=(
                f"{self.data.dataset}:{(study / self.data.path).resolve()}"
                if self.data.path
                else self.data.dataset
            ),
            target=self.data.target,
            image_size=(
                ",".join(map(str, self.data.image_size)) if self.data.image_size else None
            ),
            tokenizer=self.data.tokenizer,
            num_workers=self.data.num_workers,
            val_fraction=self.data.val_fraction,
            split_seed=self.data.split_seed,
            dropout=self.dropout,
            train=self.train,
            templates=(
                (study / self.templates_path).resolve() if self.templates_path else None
            ),
        )
