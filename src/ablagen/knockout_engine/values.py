"""Values of the traced graph: tensors, or tuples / lists / dicts of them."""

from typing import Any, Callable

import torch


def _zip(fn: Callable[..., Any], values: list[Any]) -> Any:
    """``fn`` over the matching tensors of values that share one structure."""
    first = values[0]
    if isinstance(first, torch.Tensor):
        return fn(*values)
    if isinstance(first, (tuple, list)):
        items = [_zip(fn, [v[i] for v in values]) for i in range(len(first))]
        return type(first)(*items) if hasattr(first, "_fields") else type(first)(items)
    if isinstance(first, dict):
        return {key: _zip(fn, [v[key] for v in values]) for key in first}
    return first


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, (tuple, list, dict)):
        return [
            leaf
            for item in (value.values() if isinstance(value, dict) else value)
            for leaf in _leaves(item)
        ]
    return [value]


def _tensors(value: Any) -> list[torch.Tensor]:
    return [leaf for leaf in _leaves(value) if isinstance(leaf, torch.Tensor)]


def _nbytes(value: Any) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(value))


def _clone(value: Any) -> Any:
    return _zip(torch.clone, [value])


def _copy_k(value: Any, k: int, n: int) -> Any:
    """Copy ``k`` (``n`` samples) of a stacked value."""
    return _zip(lambda t: t[k * n : (k + 1) * n], [value])
