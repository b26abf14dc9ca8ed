"""Activations recognised by behaviour: custom classes that are GELU, SiLU, QuickGELU...

Hugging Face builds its activations from its own classes (``NewGELUActivation``,
``QuickGELUActivation``, ``GELUActivation`` in ``ACT2FN``), timm and many research
repos do the same: an ``isinstance`` check against ``torch.nn`` misses them all. A
module counts as an activation when it has no parameters and no children, acts
elementwise on a probe tensor (permuting the input permutes the output), changes its
input, and either its class name names a known activation or its output matches one
of :data:`REFERENCES` on the probe.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

#: class-name words that name an activation (matched case-insensitively)
ACTIVATION_NAMES = re.compile(
    r"gelu|silu|swish|mish|relu|sigmoid|tanh|softplus|elu|hardswish|squareplus"
    r"|activation",
    re.IGNORECASE,
)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


#: what a known activation computes, by name (the probe compares against each)
REFERENCES = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": _gelu_tanh,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "silu": F.silu,
    "mish": F.mish,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softplus": F.softplus,
    "elu": F.elu,
    "selu": F.selu,
    "celu": F.celu,
    "leaky_relu": F.leaky_relu,
    "relu6": F.relu6,
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "relu2": lambda x: F.relu(x) ** 2,
}

_PROBE = torch.linspace(-4.0, 4.0, 97).reshape(1, 97)


def _probe(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    try:
        with torch.no_grad():
            out = module.forward(x.clone())  # no hooks: the probe leaves no trace
    except Exception:  # not callable on one tensor: not an elementwise activation
        return None
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        return None
    return out


def behaves_as(module: nn.Module) -> str | None:
    """The name of the known activation ``module`` computes, if it computes one."""
    out = _probe(module, _PROBE)
    if out is None:
        return None
    for name, ref in REFERENCES.items():
        if torch.allclose(out, ref(_PROBE), atol=1e-4, rtol=1e-4):
            return name
    return None


def acts_like_activation(module: nn.Module) -> bool:
    """See the module docstring."""
    if any(True for _ in module.parameters()) or any(True for _ in module.children()):
        return False
    if isinstance(module, (nn.Identity, nn.Dropout)):
        return False
    out = _probe(module, _PROBE)
    if out is None or torch.allclose(out, _PROBE):
        return False
    order = torch.randperm(_PROBE.shape[1], generator=torch.Generator().manual_seed(0))
    moved = _probe(module, _PROBE[:, order])
    if moved is None or not torch.allclose(moved, out[:, order], atol=1e-6):
        return False  # not elementwise (softmax, normalisation, ...)
    return bool(ACTIVATION_NAMES.search(type(module).__name__)) or (
        behaves_as(module) is not None
    )
