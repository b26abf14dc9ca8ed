"""``ablagen generate``: model file -> study directory (scripts + manifest), atomically."""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import jinja2
import torch

from ablagen import __version__
from ablagen.analysis import Inventory, analyze
from ablagen.codegen.context import (
    DATASETS,
    SKLEARN_DATASETS,
    AblationSpec,
    DataSpec,
    ModelInfo,
    ScriptContext,
    TrainConfig,
    script_imports,
)
from ablagen.codegen.env import make_environment
from ablagen.codegen.knockout import render_knockout
from ablagen.codegen.perturb_block import perturb_block_source
from ablagen.codegen.plan import (
    ablation_spec,
    parse_kinds,
    parse_methods,
    plan_variants,
    script_names,
)
from ablagen.codegen.render import render_script
from ablagen.errors import ConfigError, OutputError, StudyError
from ablagen.fsutil import sha256_bytes
from ablagen.loading import LoadedModel, load_model, split_model_spec
from ablagen.source import embed_model_source, import_lines, without_imports
from ablagen.studydir import (
    BASELINE_ID,
    MANIFEST,
    Manifest,
    VariantEntry,
    is_study_dir,
    load_manifest,
)

MODES = ("retrain", "knockout")

#: names the script template defines itself; the embedded model must not reuse them
SCRIPT_NAMES = frozenset(
    "EPOCHS BATCH_SIZE LR OPTIMIZER MOMENTUM WEIGHT_DECAY L1 GRAD_CLIP SCHEDULER STEP_SIZE GAMMA "
    "WARMUP_EPOCHS NOISE SIGMA NOISE_SCHEDULE TASK DATASET VAL_FRACTION SPLIT_SEED TARGET_ACC "
    "STOP_AT_TARGET PATIENCE SEED DEVICE SAMPLE_SHAPE NUM_OUTPUTS VARIANT COMPONENT ABLATED_PARAMS "
    "SYNTHETIC_SAMPLES TOKEN_RANGE NOISE_SCALES EXIT_CODES new_model ablate load_data split "
    "make_optimizer make_scheduler noise_scaled_groups set_unit_scales loss_fn penalty correct "
    "train_one_epoch evaluate train parse_args seed_everything peak_memory_bytes save_atomic "
    "jsonable main BatchMean AtCallSite zero_output skip_module silence_units find_node out_of_place COMPONENTS".split()
)


@dataclass(frozen=True)
class GenerateOptions:
    model: str  # path.py[:NAME]
    out: Path
    kinds: str | None = None
    components: tuple[str, ...] = ()
    methods: str | None = None
    neuron_groups: int | None = None
    input_shape: str | None = None
    mode: str = "retrain"
    dataset: str | None = (
        None  # None: build_data() if the file has it, else its DATASET, else synthetic
    )
    val_fraction: float = 0.2
    split_seed: int = 0
    dropout: float | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    templates: Path | None = None
    force: bool = False


@dataclass(frozen=True)
class GeneratedStudy:
    out: Path
    manifest: Manifest
    inventory: Inventory
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class Prepared:
    """A loaded, analysed model and everything its scripts share, ready to render."""

    opts: GenerateOptions
    env: jinja2.Environment
    loaded: LoadedModel
    inventory: Inventory
    data: DataSpec
    model: ModelInfo
    command: str

    @functools.cached_property
    def base(self) -> dict[str, Any]:
        """The ScriptContext fields every script of the study shares."""
        return dict(
            ablagen_version=__version__,
            regenerate_command=self.command,
            model=self.model,
            data=self.data,
            train=self.opts.train,
            perturb_source=without_imports(  # what the script imports above it
                perturb_block_source(),
                script_imports(self.model.expression) | import_lines(self.model.source),
            ),
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


def prepare(opts: GenerateOptions) -> Prepared:
    """Validate the options, load and analyse the model, extract its source."""
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
    return Prepared(
        opts, env, loaded, inventory, data, model, regenerate_command(opts, model.path)
    )


def generate_study(opts: GenerateOptions) -> GeneratedStudy:
    """Render every script into memory, then write the study directory in one swap."""
    kinds, methods = parse_kinds(opts.kinds), parse_methods(opts.methods)
    _check_out(opts.out.resolve(), opts.model, opts.force)
    prepared = prepare(opts)
    opts, env, loaded, inventory = (
        prepared.opts,
        prepared.env,
        prepared.loaded,
        prepared.inventory,
    )
    data, model, command, base = (
        prepared.data,
        prepared.model,
        prepared.command,
        prepared.base,
    )
    pairs = plan_variants(inventory, kinds, opts.components, methods)
    specs = [ablation_spec(comp, method) for comp, method in pairs]
    names = script_names([s.variant_id for s in specs])
    files: dict[str, bytes] = {}
    entries: list[VariantEntry] = []
    for spec in [None, *specs] if opts.mode == "retrain" else [None]:
        name = "baseline.py" if spec is None else names[spec.variant_id]
        data_bytes = prepared.render(
            name,
            BASELINE_ID if spec is None else spec.variant_id,
            _title(spec, loaded),
            _description(spec),
            ablations=() if spec is None else (spec,),
        )
        files[name] = data_bytes
        entries.append(_entry(spec, name, sha256_bytes(data_bytes)))
    if (
        opts.mode == "knockout"
    ):  # one knockout.py scores every variant on the trained baseline
        knockout_files, entries = render_knockout(
            env, base, specs, loaded, inventory, opts.templates is not None
        )
        files.update(knockout_files)
    manifest = Manifest(
        ablagen_version=__version__,
        mode=opts.mode,
        model={
            "path": model.path,
            "sha256": loaded.sha256,
            "name": loaded.ref.name,
            "label": loaded.ref.label,
            "parameters": [[n, list(s)] for n, s in inventory.parameters],
            "traced": inventory.traced,
        },
        config=_config_json(opts, data, command),
        variants=(entries[0], *sorted(entries[1:], key=lambda e: e.id)),
        components=tuple(c.to_json() for c in inventory.components),
    )
    files[MANIFEST] = manifest.dumps().encode("utf-8")
    write_study(opts.out, files)
    return GeneratedStudy(opts.out, manifest, inventory, inventory.warnings)


def _entry(spec: AblationSpec | None, script: str, digest: str) -> VariantEntry:
    if spec is None:
        return VariantEntry(BASELINE_ID, None, "baseline", None, script, digest)
    return VariantEntry(
        spec.variant_id, spec.component_id, spec.kind, spec.method, script, digest
    )


def _title(spec: AblationSpec | None, loaded: LoadedModel) -> str:
    if spec is None:
        return f"Baseline training run of {loaded.ref.label}: nothing ablated."
    return f"Ablation {spec.variant_id} of {loaded.ref.label}."


def _description(spec: AblationSpec | None) -> tuple[str, ...]:
    if spec is None:
        return (
            "Every ablation variant of this study is compared with this run, seed by seed.",
        )
    return (
        f"{spec.component_id} ({spec.op}, a {spec.kind}) -- {spec.method}: {spec.summary}.",
    )


# --------------------------------------------------------------------------- inputs


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
    embedded = embed_model_source(
        loaded.path, wanted, constants, script_imports(loaded.ref.expression)
    )
    clash = sorted((embedded.names & SCRIPT_NAMES) - {"build_data"})
    if clash:
        raise ConfigError(
            f"{loaded.path} defines {', '.join(clash)}, which the generated scripts define too",
            "rename them in the model file",
        )
    with torch.no_grad():
        output = loaded.model(*loaded.example_inputs)
    first = output[0] if isinstance(output, (tuple, list)) else output
    return ModelInfo(
        path=Path(
            os.path.relpath(loaded.path.resolve(), opts.out.resolve())
        ).as_posix(),
        label=loaded.ref.label,
        sha256=loaded.sha256,
        source=embedded.code,
        expression=loaded.ref.expression,
        sample_shape=tuple(loaded.example_inputs[0].shape[1:]),
        num_outputs=int(first.shape[-1]) if first.dim() else 1,
    )


def _check_out(out: Path, model: str, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {str(out)!r} is a file", "give a directory path")
    if out.is_dir() and any(out.iterdir()):
        if not is_study_dir(out):
            raise StudyError(
                f"--out {str(out)!r} is not empty and not an ablagen study",
                "choose a new or empty directory (nothing was written)",
            )
        if force:
            return
        old = load_manifest(out)
        path, _ = split_model_spec(model)
        if (out / old.model.get("path", "")).resolve() != path.resolve():
            raise StudyError(
                f"{str(out)!r} is a study of {old.model.get('path')}, not of {path}",
                "pass --force to replace it, or choose another --out",
            )


# --------------------------------------------------------------------------- manifest


_FLAG_FIELDS = (
    "kinds",
    "methods",
    "neuron_groups",
    "input_shape",
    "mode",
    "dataset",
    "val_fraction",
    "split_seed",
    "dropout",
)


def regenerate_command(opts: GenerateOptions, model_rel: str) -> str:
    """The command that regenerates the study, run from inside the study directory."""
    _, name = split_model_spec(opts.model)
    words = [
        "ablagen",
        "generate",
        model_rel + (f":{name}" if name else ""),
        "--out",
        ".",
    ]
    defaults = GenerateOptions(model="", out=Path("."))
    for key in _FLAG_FIELDS:
        value = getattr(opts, key)
        if value != getattr(defaults, key):
            words += [f"--{key.replace('_', '-')}", str(value)]
    for comp in opts.components:
        words += ["--components", comp]
    base = TrainConfig()
    for f in fields(TrainConfig):
        value = getattr(opts.train, f.name)
        if value != getattr(base, f.name):
            flag = f"--{f.name.replace('_', '-')}"
            words += (
                [flag]
                if value is True
                else (
                    [f"--no-{f.name.replace('_', '-')}"]
                    if value is False
                    else [flag, str(value)]
                )
            )
    if opts.templates is not None:
        words += [
            "--templates",
            Path(
                os.path.relpath(opts.templates.resolve(), opts.out.resolve())
            ).as_posix(),
        ]
    return shlex.join(words)


def _config_json(opts: GenerateOptions, data: DataSpec, command: str) -> dict[str, Any]:
    return {
        "command": command,
        "kinds": list(parse_kinds(opts.kinds)),
        "methods": list(parse_methods(opts.methods) or []),
        "components": list(opts.components),
        "neuron_groups": opts.neuron_groups,
        "input_shape": opts.input_shape,
        "mode": opts.mode,
        "data": asdict(data),
        "dropout": opts.dropout,
        "train": asdict(opts.train),
        "custom_templates": opts.templates is not None,
        "templates_path": (
            Path(
                os.path.relpath(opts.templates.resolve(), opts.out.resolve())
            ).as_posix()
            if opts.templates
            else None
        ),
    }


# --------------------------------------------------------------------------- writing


def write_study(out: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` into a temp dir beside ``out``, then swap it in.

    Everything an existing study holds beyond its old scripts and manifest (results,
    logs, reports) moves into the new one; a failure before the swap leaves the old
    study untouched.
    """
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".ablagen-tmp-{out.name}-", dir=parent))
    except OSError as exc:
        raise OutputError(
            f"cannot write to {str(out)!r} ({exc.strerror})", "choose a writable --out"
        ) from exc
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(
            f"cannot write the study to {str(out)!r} ({exc})", "choose a writable --out"
        ) from exc
    if not out.is_dir():
        tmp.rename(out)
        return
    generated = _generated_files(out)
    old = parent / f".ablagen-old-{out.name}-{tmp.name[-8:]}"
    out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        old.rename(out)
        raise
    for entry in old.iterdir():  # results, logs, reports: keyed by script hash, kept
        if entry.name not in generated and not (out / entry.name).exists():
            entry.rename(out / entry.name)
    shutil.rmtree(old)


def _generated_files(study: Path) -> set[str]:
    try:
        return {MANIFEST} | {v.script for v in load_manifest(study).variants}
    except StudyError:  # a corrupt manifest: keep every other file
        return {MANIFEST}
