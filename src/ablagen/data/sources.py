"""``--dataset`` and the model file's data functions -> the scripts' DataSpec.

The forms, in the order tried when ``--dataset`` is not given: the model file's
``build_data()`` (four in-memory tensors, the fast path), ``build_datasets()`` (two
``Dataset`` objects, streamed), ``build_loaders(batch_size, seed)`` (two loaders, the
user's own), its ``DATASET`` constant, else seeded synthetic data. Built-in sources
read local files: ``folder:DIR`` (images, streamed), ``csv:FILE`` and ``text:FILE``
(in memory). Files are read here once, and what the scripts need (classes, columns,
vocabulary) is recorded in the spec: :mod:`ablagen.data.files`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ablagen.generate.context import (
    DATASETS,
    FILE_DATASETS,
    SKLEARN_DATASETS,
    TOKENIZERS,
    DataSpec,
)
from ablagen.data import files, synthetic
from ablagen.core.errors import ConfigError, InputShapeError
from ablagen.analyze.loading import LoadedModel

USER_FUNCTIONS = ("build_data", "build_datasets", "build_loaders")


def resolve_data(
    opts: Any, loaded: LoadedModel, out: Path
) -> tuple[DataSpec, tuple[torch.Tensor, torch.Tensor] | None]:
    """The DataSpec of ``opts`` (GenerateOptions) and, where the generator could read
    it, one small batch ``(x, y)`` of the real data (for the shape and task checks)."""
    name, path = _parse(opts.dataset, loaded)
    if not 0 < opts.val_fraction < 1:
        raise ConfigError(
            f"bad --val-fraction {opts.val_fraction}", "give a share in (0, 1)"
        )
    if name in USER_FUNCTIONS and not callable(getattr(loaded.module, name, None)):
        raise ConfigError(
            f"{loaded.path} has no {name}()", "define it, or pick a built-in --dataset"
        )
    if len(loaded.example_inputs) != 1 and name not in USER_FUNCTIONS:
        raise ConfigError(
            f"{loaded.path}'s model takes {len(loaded.example_inputs)} inputs",
            "the built-in loop feeds one tensor: provide --templates with your own loop",
        )
    if opts.num_workers is not None and opts.num_workers < 0:
        raise ConfigError(
            f"bad --num-workers {opts.num_workers}",
            "give 0 (load in the main process) or more",
        )
    sample = loaded.example_inputs[0][0]
    base = DataSpec(
        name, opts.val_fraction, opts.split_seed, num_workers=opts.num_workers
    )
    if name in SKLEARN_DATASETS:
        features = SKLEARN_DATASETS[name][1]
        if sample.numel() != features:
            raise ConfigError(
                f"dataset {name} has {features} features per sample but the model takes "
                f"{tuple(sample.shape)} = {sample.numel()} values",
                "pick another --dataset (e.g. synthetic) or fix INPUT_SHAPE",
            )
    if name == "folder":
        return files.folder_spec(base, path, sample, opts, loaded, out)
    if name == "csv":
        return files.csv_spec(base, path, sample, opts, loaded, out)
    if name == "text":
        return files.text_spec(base, path, sample, opts, loaded, out)
    if name in ("build_datasets", "build_loaders"):
        return base, sample_batch(name, loaded, opts.train.batch_size)
    token_range = None
    if not sample.is_floating_point():
        token_range = synthetic.token_range(loaded.model, loaded.example_inputs[0])
    return (
        DataSpec(name, opts.val_fraction, opts.split_seed, token_range=token_range),
        None,
    )


def _parse(dataset: str | None, loaded: LoadedModel) -> tuple[str, str | None]:
    if dataset is None:
        default = getattr(loaded.module, "DATASET", None)
        for fn in USER_FUNCTIONS:
            if callable(getattr(loaded.module, fn, None)):
                return fn, None
        dataset = default if isinstance(default, str) else "synthetic"
    if dataset == "file":
        return "build_data", None
    kind, sep, path = dataset.partition(":")
    if kind in FILE_DATASETS:
        if not sep or not path:
            raise ConfigError(
                f"--dataset {dataset!r} names no path", f"write it as {kind}:PATH"
            )
        return kind, path
    if dataset not in DATASETS:
        raise ConfigError(
            f"unknown dataset {dataset!r}",
            f"use one of: {', '.join(DATASETS)}, file, folder:DIR, csv:FILE, text:FILE",
        )
    return dataset, None


def sample_batch(
    name: str, loaded: LoadedModel, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two training samples from ``build_datasets()`` or the first batch of
    ``build_loaders()``, after checking what the function returned."""
    fn = getattr(loaded.module, name)
    where = f"{name}() in {loaded.path}"
    try:
        value = fn() if name == "build_datasets" else fn(batch_size, 0)
    except Exception as exc:
        raise ConfigError(
            f"{where} failed: {type(exc).__name__}: {exc}", f"fix {name}()"
        ) from exc
    kind = "Dataset" if name == "build_datasets" else "DataLoader"
    if not isinstance(value, Sequence) or len(value) != 2:
        got = (
            f"{len(value)} values"
            if isinstance(value, Sequence)
            else type(value).__name__
        )
        raise ConfigError(
            f"{where} returned {got}, not (train, val)",
            f"return two {kind}s: (train, val)",
        )
    if name == "build_datasets":
        bad = [
            type(v).__name__
            for v in value
            if not isinstance(v, torch.utils.data.Dataset) or not hasattr(v, "__len__")
        ]
        if bad:
            raise ConfigError(
                f"{where} returned {', '.join(bad)}, not torch Datasets with a length",
                "return two torch.utils.data.Dataset objects (e.g. TensorDataset): (train, val)",
            )
        if min(len(v) for v in value) == 0:
            raise ConfigError(
                f"{where} returned an empty dataset", "give both splits samples"
            )
        train = value[0]
        batch = torch.utils.data.default_collate(
            [train[i] for i in range(min(2, len(train)))]
        )
    else:
        bad = [type(v).__name__ for v in value if not hasattr(v, "__iter__")]
        if bad:
            raise ConfigError(
                f"{where} returned {', '.join(bad)}, not iterable loaders",
                "return two torch.utils.data.DataLoader objects: (train, val)",
            )
        batch = next(iter(value[0]), None)
    return _pair(batch, where)


def _pair(batch: Any, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if (
        not isinstance(batch, (tuple, list))
        or len(batch) != 2
        or not all(isinstance(t, torch.Tensor) for t in batch)
    ):
        raise ConfigError(
            f"the samples from {where} are not (input, target) tensor pairs",
            "make each sample a pair (x, y) of tensors (or numbers)",
        )
    return batch[0], batch[1]


def check_fits(loaded: LoadedModel, x: torch.Tensor, where: str) -> Any:
    """The model's output on the batch ``x`` from ``where``; a one-line error if it fails."""
    model_shape = tuple(loaded.example_inputs[0].shape[1:])
    if tuple(x.shape[1:]) != model_shape:
        raise InputShapeError(
            f"the samples from {where} have shape {tuple(x.shape[1:])} but the model's "
            f"input ({loaded.input_from}) is {model_shape}",
            "make the data and the model agree (reshape in the dataset, or fix INPUT_SHAPE)",
        )
    try:
        with torch.no_grad():
            return loaded.model(x)
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputShapeError(
            f"the model in {loaded.path} fails on a batch from {where} of shape "
            f"{tuple(x.shape)}: {msg}",
            "make the data fit the model's input",
        ) from exc


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    """``"32"`` -> (32, 32); ``"24,32"`` -> (24, 32)."""
    if text is None:
        return None
    try:
        parts = tuple(
            int(p) for p in str(text).replace("x", ",").split(",") if p.strip()
        )
    except ValueError:
        parts = ()
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise ConfigError(
            f"bad --image-size {text!r}",
            "give one size or HEIGHT,WIDTH, e.g. --image-size 32",
        )
    return parts  # type: ignore[return-value]


def check_tokenizer(tokenizer: str | None) -> str:
    value = tokenizer or "byte"
    if value not in TOKENIZERS:
        raise ConfigError(
            f"unknown --tokenizer {value!r}", f"use one of: {', '.join(TOKENIZERS)}"
        )
    return value
