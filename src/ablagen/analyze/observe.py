"""One question, one pass: which modules ran, in what order, with which shapes.

:func:`observe_calls` runs the model once with forward hooks on every submodule and
returns one :class:`Call` per module invocation, in the order the calls started.
Both the fx path (for blocks) and the untraced fallback (for everything) use it.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Call:
    order: int  # position of the call's start among all calls
    module: str  # qualified name
    site: int  # 0 for the module's first call, 1 for its second, ...
    input_shape: Shape | None  # None unless the first input is a tensor
    output_shape: Shape | None  # None unless the output is a single tensor
    tensor_out: bool  # the output is a single tensor
    line: tuple[str, int] | None = None  # the (file, line) of the code that called it


#: frames of torch itself (Module.__call__) between a hook and the calling code
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep


def _caller() -> tuple[str, int] | None:
    """The first frame above the hook that is not torch's: the line that called it."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(_TORCH_DIR):
        frame = frame.f_back
    return None if frame is None else (frame.f_code.co_filename, frame.f_lineno)


def _shape(value: Any) -> Shape | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def observe_calls(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[Call]:
    open_calls: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
    finished: list[Call] = []
    sites: dict[str, int] = defaultdict(int)
    order = itertools.count()

    def pre_hook(name: str):
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            first = args[0] if args else None
            open_calls[id(module)].append(
                (next(order), name, sites[name], _shape(first), _caller())
            )
            sites[name] += 1

        return hook

    def post_hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        start, name, site, in_shape, line = open_calls[id(module)].pop()
        tensor_out = isinstance(output, torch.Tensor)
        finished.append(
            Call(start, name, site, in_shape, _shape(output), tensor_out, line)
        )

    handles = []
    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_pre_hook(pre_hook(name)))
                handles.append(module.register_forward_hook(post_hook))
        with torch.no_grad():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return sorted(finished, key=lambda c: c.order)
