"""The one typed context every template sees (as ``ctx``), and the options behind it.

Templates may use exactly these fields; the README lists them. Values are rendered
into Python with the ``py`` filter (``repr``), so any string -- a component id with
quotes or spaces -- becomes an escaped literal.
"""

from __future__ import annotations

import keyword
from dataclasses import asdict, dataclass, field
from typing import Any

from ablagen.core.errors import ConfigError

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop")
SCHEDULERS = ("none", "step", "exponential", "cosine", "cyclic", "warmup")
TASKS = ("classification", "regression", "multilabel", "tokens", "lm")
AMPS = ("none", "bf16", "fp16")  # mixed precision of the forward passes (autocast)
#: sources named by --dataset alone; folder:DIR, csv:FILE and text:FILE take a path
DATASETS = (
    "build_data",
    "build_datasets",
    "build_loaders",
    "digits",
    "wine",
    "breast_cancer",
    "synthetic",
)
FILE_DATASETS = ("folder", "csv", "text")
#: sources the scripts stream through a DataLoader (the rest are in-memory tensors)
STREAMED = ("build_datasets", "build_loaders", "folder")
TOKENIZERS = ("byte", "word")

#: scikit-learn loader and feature count of the bundled datasets
SKLEARN_DATASETS = {
    "digits": ("load_digits", 64),
    "wine": ("load_wine", 13),
    "breast_cancer": ("load_breast_cancer", 30),
}


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(
            f"unknown {name} {value!r}", f"use one of: {', '.join(choices)}"
        )


@dataclass(frozen=True)
class TrainConfig:
    """The training settings written into every script's config block."""

    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.003
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    l1: float = 0.0
    grad_clip: float = 0.0
    scheduler: str = "none"
    step_size: int = 10
    gamma: float = 0.5
    warmup_epochs: int = 2
    noise: str = "gaussian"
    sigma: float = 0.0
    noise_schedule: str = "constant"
    task: str = "classification"
    target_acc: float = 0.9
    target_ppl: float = (
        10.0  # lm: "epochs to target" is the first epoch at this val perplexity
    )
    ignore_index: int = -100  # tokens and lm: labels with this value are not scored
    stop_at_target: bool = False
    patience: int | None = None  # None: no early stopping
    # the accelerator options: each adds its code to the scripts only when set
    amp: str = "none"  # autocast dtype: none | bf16 | fp16 (fp16 with a GradScaler)
    channels_last: bool = False  # image models: NHWC weights and inputs
    compile: bool = False  # torch.compile the model after the ablation
    grad_accum: int = 1  # micro-batches per optimizer step

    def validate(self) -> TrainConfig:
        from ablagen import perturb

        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("task", self.task, TASKS)
        _choice("mixed precision (--amp)", self.amp, AMPS)
        _choice("noise kind", self.noise, tuple(sorted(perturb.NOISE_KINDS)))
        _choice("noise schedule", self.noise_schedule, tuple(sorted(perturb.SCHEDULES)))
        checks = [
            ("--epochs", self.epochs >= 1, "give at least 1"),
            ("--batch-size", self.batch_size >= 1, "give at least 1"),
            ("--lr", self.lr > 0, "give a positive learning rate"),
            ("--weight-decay", self.weight_decay >= 0, "give 0 or a positive value"),
            ("--l1", self.l1 >= 0, "give 0 or a positive value"),
            ("--grad-clip", self.grad_clip >= 0, "give 0 (off) or a positive norm"),
            ("--sigma", self.sigma >= 0, "give 0 (no noise) or a positive std"),
            ("--target-acc", 0 <= self.target_acc <= 1, "give an accuracy in [0, 1]"),
            ("--target-ppl", self.target_ppl >= 1, "give a perplexity of 1 or more"),
            (
                "--patience",
                self.patience is None or self.patience >= 1,
                "give 1 or more epochs (leave it out: no early stopping)",
            ),
            ("--step-size", self.step_size >= 1, "give at least 1 epoch"),
            ("--gamma", self.gamma > 0, "give a positive decay factor"),
            ("--warmup-epochs", self.warmup_epochs >= 1, "give at least 1 epoch"),
            (
                "--grad-accum",
                self.grad_accum >= 1,
                "give 1 (off) or more micro-batches",
            ),
        ]
        for flag, ok, fix in checks:
            if not ok:
                raise ConfigError(
                    f"bad value for {flag}: {getattr(self, flag[2:].replace('-', '_'))!r}",
                    fix,
                )
        return self

    def to_manifest(self) -> dict[str, Any]:
        """The ``config.train`` entry of ``manifest.json``."""
        return asdict(self)

    @classmethod
    def from_manifest(cls, data: dict[str, Any]) -> TrainConfig:
        """Read back what :meth:`to_manifest` wrote."""
        return cls(**data)

    @property
    def scores_accuracy(self) -> bool:
        """Whether the task has an accuracy (count_correct): not regression, not lm."""
        return self.task in ("classification", "multilabel", "tokens")


@dataclass(frozen=True)
class DataSpec:
    """Where a study's data comes from, resolved at generate time (ablagen.data).

    ``path`` (folder, csv, text) is relative to the study directory; ``columns``,
    ``classes`` and ``vocab`` are what the generator read from the files and wrote
    into the scripts, so every variant sees the same features, labels and tokens.
    """

    dataset: str
    val_fraction: float = 0.2
    split_seed: int = 0
    synthetic_samples: int = 512
    token_range: int | None = None  # integer inputs: draw tokens from [0, token_range)
    path: str | None = None  # folder:DIR, csv:FILE, text:FILE
    target: str | None = None  # csv: the target column
    columns: tuple[str, ...] = ()  # csv: the feature columns, in order
    classes: tuple[
        str, ...
    ] = ()  # csv and folder classification: label names, in order
    image_size: tuple[int, int] | None = None  # folder: (height, width) after resizing
    tokenizer: str | None = None  # text: byte | word
    vocab: tuple[str, ...] = ()  # text: the tokens (byte: one latin-1 char per byte)
    has_val_dir: bool = False  # folder: DIR/train and DIR/val, no split
    num_workers: int | None = None  # streamed: None picks a value for the machine

    @property
    def streamed(self) -> bool:
        """Whether the scripts stream batches through a DataLoader."""
        return self.dataset in STREAMED

    @property
    def needs_sklearn(self) -> bool:
        return self.dataset in SKLEARN_DATASETS

    @property
    def uses_split(self) -> bool:
        """Whether the scripts split the data themselves, by VAL_FRACTION and SPLIT_SEED."""
        own = ("build_data", "build_datasets", "build_loaders", "text")
        return self.dataset not in own and not self.has_val_dir

    @property
    def vocab_literal(self) -> str:
        """The text vocabulary as the scripts write it: bytes, or a list of words."""
        if self.tokenizer == "byte":
            return repr("".join(self.vocab).encode("latin-1"))
        return repr(list(self.vocab))

    @property
    def requirements(self) -> str:
        """What the scripts need besides torch (the header says it)."""
        if self.needs_sklearn:
            return ", scikit-learn"
        return ", Pillow" if self.dataset == "folder" else ""

    def tensors(self, device: str) -> str:
        """The scripts' expression for (x_train, y_train, x_val, y_val) on ``device``:
        the model file's build_data() is called as it is (it may return arrays),
        every other source through the script's own load_data()."""
        if self.dataset == "build_data":
            return f"(torch.as_tensor(t, device={device}) for t in build_data())"
        return f"(t.to({device}) for t in load_data())"

    @property
    def spec(self) -> str:
        """The --dataset value that names this source again."""
        return f"{self.dataset}:{self.path}" if self.path else self.dataset

    @property
    def loader(self) -> str:
        return SKLEARN_DATASETS[self.dataset][0]

    @property
    def summary(self) -> str:
        if self.dataset == "build_data":
            return "the model file's build_data()"
        if self.dataset in ("build_datasets", "build_loaders"):
            return f"the model file's {self.dataset}(), streamed through DataLoaders"
        if self.dataset == "folder":
            split = (
                "its train/ and val/ folders"
                if self.has_val_dir
                else f"{self.val_fraction:g} held out (split seed {self.split_seed})"
            )
            return f"the image folder {self.path} streamed through DataLoaders, {split}"
        if self.dataset == "csv":
            return f"the CSV file {self.path} (target {self.target}) in memory, {self.val_fraction:g} held out"
        if self.dataset == "text":
            return f"the text file {self.path}, {self.tokenizer} tokens in memory, the last {self.val_fraction:g} held out"
        if self.dataset == "synthetic":
            return f"{self.synthetic_samples} seeded synthetic samples, {self.val_fraction:g} held out"
        return f"scikit-learn's {self.dataset}, {self.val_fraction:g} held out (split seed {self.split_seed})"

    def to_manifest(self) -> dict[str, Any]:
        """The ``config.data`` entry of ``manifest.json``."""
        return asdict(self)

    @classmethod
    def from_manifest(cls, data: dict[str, Any]) -> DataSpec:
        """Read back what :meth:`to_manifest` wrote (JSON lists become tuples again)."""
        fields = dict(data)
        for name in ("columns", "classes", "vocab", "image_size"):
            if isinstance(fields.get(name), list):
                fields[name] = tuple(fields[name])
        return cls(**fields)


#: see ModelInfo.build
BUILD_MARK = "__ablagen_build_model__()"


@dataclass(frozen=True)
class ModelInfo:
    path: str  # the model file, relative to the study directory
    label: str  # e.g. "class DigitsCNN"
    sha256: str
    source: str  # the embedded source (libcst)
    expression: str  # builds a fresh model, e.g. "DigitsCNN()"
    sample_shape: tuple[int, ...]  # one input sample, no batch dimension
    num_outputs: int  # the model output's last dimension
    #: synthetic regression / multilabel targets of a model whose output per sample
    #: has more than one dimension (an image, a sequence): one sample's output shape
    target_shape: tuple[int, ...] = ()
    output: str = (
        ""  # picks the prediction from the model's return value ("": a tensor)
    )
    output_note: str = ""  # what the model returns, said in the script
    typed_path: str = ""  # the model file as the user typed it, for messages
    #: forward's later parameters with their defaults (Python literals), for torch.fx:
    #: ``mask=None`` is traced as None (see ablate.trace)
    trace_defaults: str = ""

    @property
    def build(self) -> str:
        """What the templates write where the scripts build the model: a marker the
        renderer swaps for ``expression`` once the scripts' own names have given way
        to the model's, so a model class named like one of them keeps its name."""
        return BUILD_MARK

    @property
    def display(self) -> str:
        """The model file as the user typed it (else relative to the study)."""
        return self.typed_path or self.path

    @property
    def imports_copy(self) -> bool:
        """Whether the scripts import ``copy`` (``imports.py.j2``): to build the model."""
        return builds_by_copy(self.expression)


def builds_by_copy(expression: str) -> bool:
    """A model expression like ``copy.deepcopy(model)``, for a model given as an instance."""
    return expression.startswith("copy.")


@dataclass(frozen=True)
class AblationSpec:
    variant_id: str  # "<component>:<method>"
    component_id: str
    kind: str  # layer | block | activation | neuron
    op: str
    method: str  # identity | zero | mean | mask
    template: str  # replace_identity | identity_hook | zero_hook | hook | fx_node | head | call
    module: str | None  # qualified name of the hooked / replaced module
    parent: str | None  # replace_identity: the parent's qualified name ("" = the model)
    child: str | None  # replace_identity: the attribute name on the parent
    call_site: int | None  # hook at this call site only
    node: str | None  # fx_node: the torch.fx node name
    units: tuple[int, int] | None  # mask: [start, stop)
    unit_dim: int | None  # mask: the output dimension holding the units (-1: last)
    ablated_params: int  # parameters that no longer affect the output
    summary: str  # one line: what the ablation does
    docstring: str  # the ablate() docstring
    out_proj: str | None = None  # head: the output projection whose input is split
    head: int | None = None  # head: which one
    num_heads: int | None = None  # head: of how many
    call_op: str | None = None  # call: the functional activation (torch.export found)
    call_index: int | None = None  # call: its index among the module's calls of it

    @property
    def skips_node(self) -> bool:
        """An identity on a graph node: the script skips it (``skip_node``)."""
        return self.template == "fx_node" and self.method == "identity"

    @property
    def module_expression(self) -> str:
        """The ablated module in a script: ``model.conv1``, else ``model.get_submodule(...)``
        (a name with a part that is no attribute name, such as ``layers.0``)."""
        parts = (self.module or "").split(".")
        if all(part.isidentifier() and not keyword.iskeyword(part) for part in parts):
            return ".".join(["model", *parts])
        return f"model.get_submodule({self.module!r})"

    @property
    def operator_class(self) -> str:
        """The :mod:`ablagen.ablate` operator of this method (its registry entry)."""
        from ablagen.ablate import ABLATIONS, HEAD_ABLATIONS  # torch, when writing

        registry = HEAD_ABLATIONS if self.template == "head" else ABLATIONS
        return registry[self.method].__name__

    @property
    def operator(self) -> str:
        """The Python expression that builds this ablation's operator in a script."""
        if self.template == "head":
            return f"{self.operator_class}({self.num_heads}, {self.head})"
        if self.method == "mask" and self.units is not None:
            start, stop = self.units
            return f"{self.operator_class}({self.unit_dim}, {start}, {stop})"
        return f"{self.operator_class}()"


@dataclass(frozen=True)
class ScriptContext:
    ablagen_version: str
    script_name: str
    variant_id: (
        str  # "baseline", "<component>:<method>", or an arm such as "arm:hybrid"
    )
    title: str
    description: tuple[str, ...]
    regenerate_command: str
    model: ModelInfo
    data: DataSpec
    train: TrainConfig
    ablations: tuple[
        AblationSpec, ...
    ]  # empty: the baseline (or an arm without ablation)
    noise_scales: dict[str, Any] | None = None  # importance-guided runs only
    extra: dict[str, Any] = field(default_factory=dict)  # free for user templates

    @property
    def resumable(self) -> bool:
        """Whether the script takes --resume-from (checkpoint.py.j2): a training script
        (not knockout.py or screen.py, which train their baseline once) of 3+ epochs."""
        return self.train.epochs >= 3 and "knockouts" not in self.extra

    @property
    def adds_noise(self) -> bool:
        """Whether the script carries the gradient-noise block (noise.py.j2)."""
        return self.train.sigma > 0 or bool(self.noise_scales)

    @property
    def ablation(self) -> AblationSpec | None:
        """The one ablation of a variant script (None for the baseline and the arms)."""
        return self.ablations[0] if len(self.ablations) == 1 else None

    @property
    def ablation_helpers(self) -> str:
        """The ablation code the script carries: the :mod:`ablagen.ablate` definitions its
        ablations use, cut from the library's source ("" when none is needed)."""
        from ablagen import ablate  # torch, only when scripts are written
        from ablagen.generate.embed import extract_definitions

        appliers = {
            "hook": ablate.ablate_output,
            "fx_node": ablate.ablate_node,
            "head": ablate.ablate_head,
            "call": ablate.ablate_call,
        }
        names = [
            name
            for a in self.ablations
            if a.template in appliers
            for name in (
                ("skip_node",)  # a skipped node needs no operator
                if a.skips_node
                else (a.operator_class, appliers[a.template].__name__)
            )
        ]
        if not names:
            return ""
        comment = "ablation operators (from ablagen.ablate: the knockout engine runs them too)"
        return extract_definitions(ablate, tuple(dict.fromkeys(names)), comment)

    @property
    def ablation_docstring(self) -> str:
        if len(self.ablations) == 1:
            return self.ablations[0].docstring
        return (
            f"Ablate {len(self.ablations)} components: "
            + ", ".join(a.variant_id for a in self.ablations)
            + "."
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
