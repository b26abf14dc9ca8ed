"""What the model file's data says about the model: one sample's shape, the classes.

A model file with data but no example input (no ``example_input()``, no
``INPUT_SHAPE``, no ``--input-shape``) still tells the shape of one sample:
``build_data()``'s first training tensor, ``build_datasets()``'s first sample, the
first batch of ``build_loaders()``, or the feature count of a built-in dataset
(``DATASET = "breast_cancer"``). :func:`infer_sample_shape` reads it, in the order
the scripts pick their data (:func:`ablagen.data.sources.resolve_data`).
:func:`count_classes` is the number of classes the data holds, for the check that
the model scores them all.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ablagen.core.errors import InputShapeError

#: the classes of scikit-learn's bundled datasets
SKLEARN_CLASSES = {"digits": 10, "wine": 3, "breast_cancer": 2}
#: one sample's shapes a model may take a bundled dataset in, the flat one first
#: (the scripts reshape the features to the model's sample shape)
_SKLEARN_SHAPES = {
    "digits": ((64,), (1, 8, 8), (8, 8), (1, 64)),
    "wine": ((13,), (1, 13)),
    "breast_cancer": ((30,), (1, 30)),
}
_USER_FUNCTIONS = ("build_data", "build_datasets", "build_loaders")
#: what each loaded model file's build_data() returned (see built_data)
_BUILT: weakref.WeakKeyDictionary[ModuleType, Any] = weakref.WeakKeyDictionary()


def built_data(module: ModuleType) -> Any:
    """``module.build_data()``, called once per loaded model file: generate reads one
    sample's shape, the class count and the labels from it, and a data function may
    load a whole dataset. Its errors are raised again on each call."""
    if module not in _BUILT:
        _BUILT[module] = module.build_data()
    return _BUILT[module]


def data_source(module: ModuleType, dataset: str | None) -> str | None:
    """The data the scripts will train on: ``--dataset`` (``dataset``), else the file's
    first data function, else its ``DATASET``; None when nothing names one."""
    if dataset is not None:
        return "build_data" if dataset == "file" else dataset.partition(":")[0]
    for name in _USER_FUNCTIONS:
        if callable(getattr(module, name, None)):
            return name
    default = getattr(module, "DATASET", None)
    return default if isinstance(default, str) else None


def infer_sample_shape(
    module: ModuleType,
    path: Path,
    dataset: str | None,
    fits: Callable[[tuple[int, ...]], bool],
) -> tuple[tuple[int, ...], str] | None:
    """One sample's shape (no batch dimension) and where it came from, or None.

    ``fits(shape)``: whether the model runs on a batch of that shape; of a built-in
    dataset's possible shapes the first that fits is taken (else the flat one)."""
    source = data_source(module, dataset)
    how = "--dataset" if dataset is not None else "DATASET ="
    if source in _SKLEARN_SHAPES:
        shapes = _SKLEARN_SHAPES[source]
        shape = next((s for s in shapes if fits(s)), shapes[0])
        return shape, f"{how} {source!r} ({shapes[0][0]} features)"
    if source not in _USER_FUNCTIONS or not callable(getattr(module, source, None)):
        return None
    fn = getattr(module, source)
    try:
        if source == "build_data":
            value = built_data(module)
        else:
            value = fn(2, 0) if source == "build_loaders" else fn()
        if source == "build_data":
            x = value[0][0]
        elif source == "build_datasets":
            x = value[0][0][0]
        else:
            x = next(iter(value[0]))[0][0]
        shape = tuple(int(d) for d in x.shape)
    except Exception as exc:
        raise InputShapeError(
            f"{path} gives no example input, and reading one sample of {source}() "
            f"failed: {type(exc).__name__}: {exc}",
            f"fix {source}(), or define INPUT_SHAPE (one sample, no batch dimension)",
        ) from exc
    what = "the first batch of" if source == "build_loaders" else "one sample of"
    return shape, f"{what} {source}()"


def count_classes(module: ModuleType, source: str) -> int | None:
    """How many classes ``source`` holds: a bundled dataset's, or one more than the
    largest integer label of ``build_data()``; None where it is not known."""
    if source in SKLEARN_CLASSES:
        return SKLEARN_CLASSES[source]
    fn = getattr(module, "build_data", None)
    if source != "build_data" or not callable(fn):
        return None
    try:
        value = built_data(module)
        labels = [_tensor(value[1]), _tensor(value[3])]
    except Exception:  # the scripts' own check reports a broken build_data()
        return None
    if any(
        t is None or t.is_floating_point() or t.dtype == torch.bool or t.dim() != 1
        for t in labels
    ) or not any(t.numel() for t in labels):
        return None  # regression, multi-label or soft targets: no class count
    return max(int(t.max()) for t in labels if t.numel()) + 1


def _tensor(value: Any) -> torch.Tensor | None:
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        return None
