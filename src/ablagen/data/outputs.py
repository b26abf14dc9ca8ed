"""Which part of a model's return value is the prediction, decided by one forward pass.

A model may return a tensor, a tuple or list (its first element is the prediction),
a dict (``"logits"``, else its first tensor value) or a ``ModelOutput``-like object
(``.logits``, else its first tensor attribute). The answer is a Python suffix that the
scripts write plainly after the model call (``[0]``, ``["logits"]``, ``.logits``), so
a reader sees what is trained; "" for a plain tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ablagen.core.errors import InputShapeError


@dataclass(frozen=True)
class OutputAccess:
    suffix: str  # appended to the model's return value; "" for a tensor
    note: str  # what the model returns, for the script's comment
    prediction: torch.Tensor


def output_access(output: Any, where: str) -> OutputAccess:
    """How to reach the prediction tensor in ``output`` (a model's return value)."""
    if isinstance(output, torch.Tensor):
        return OutputAccess("", "a tensor", output)
    if isinstance(output, (tuple, list)) and output:
        if isinstance(output[0], torch.Tensor):
            kind = type(output).__name__
            return OutputAccess(
                "[0]", f"a {kind}: the prediction is its first element", output[0]
            )
    if isinstance(output, dict) or _is_model_output(output):
        keys = list(output.keys()) if hasattr(output, "keys") else list(vars(output))
        tensors = [k for k in keys if isinstance(_get(output, k), torch.Tensor)]
        key = "logits" if "logits" in tensors else tensors[0] if tensors else None
        if key is not None:
            if isinstance(output, dict) and not _is_model_output(output):
                return OutputAccess(
                    f"[{key!r}]", f"a dict: the prediction is {key!r}", output[key]
                )
            if key.isidentifier():
                name = type(output).__name__
                return OutputAccess(
                    f".{key}", f"a {name}: the prediction is .{key}", _get(output, key)
                )
    raise InputShapeError(
        f"the model in {where} returns {type(output).__name__}, with no tensor to train on",
        "return a tensor, a tuple or dict whose first value is the prediction, or an object with .logits",
    )


def _is_model_output(value: Any) -> bool:
    """A Hugging Face ``ModelOutput`` or any object carrying ``.logits``."""
    return hasattr(value, "logits") or (
        hasattr(value, "keys") and hasattr(value, "to_tuple")
    )


def _get(value: Any, key: str) -> Any:
    return value[key] if isinstance(value, dict) else getattr(value, key, None)
