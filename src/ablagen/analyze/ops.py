"""Which modules, functions and tensor methods count as activations or unit layers.

Type checks, not name matching: a module is an activation if it is an instance of
one of :data:`ACTIVATION_MODULES`; a call is an activation if its target *is* one of
the functions in :data:`ACTIVATION_FUNCTIONS` (tensor methods are only known by name).
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATION_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU,
    nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.LogSigmoid, nn.Tanhshrink, nn.GLU,
)  # fmt: skip

ACTIVATION_FUNCTIONS: dict[object, str] = {
    F.relu: "relu", F.relu_: "relu_", F.relu6: "relu6", F.leaky_relu: "leaky_relu",
    F.elu: "elu", F.selu: "selu", F.celu: "celu", F.gelu: "gelu", F.silu: "silu",
    F.mish: "mish", F.sigmoid: "sigmoid", F.tanh: "tanh", F.softplus: "softplus",
    F.softsign: "softsign", F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid",
    F.hardtanh: "hardtanh", F.logsigmoid: "logsigmoid",
    torch.relu: "relu", torch.relu_: "relu_", torch.sigmoid: "sigmoid",
    torch.tanh: "tanh", torch.selu: "selu", torch.celu: "celu",
}  # fmt: skip

ACTIVATION_METHODS = frozenset(
    {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_"}
)

ADD_FUNCTIONS = frozenset({operator.add, operator.iadd, torch.add})
ADD_METHODS = frozenset({"add", "add_"})

#: layers whose output units (features / channels) can be masked, and their unit dim
UNIT_LAYERS: dict[type[nn.Module], int] = {
    nn.Linear: -1,
    nn.Conv1d: 1,
    nn.Conv2d: 1,
    nn.Conv3d: 1,
}


def is_conv1d(module: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2): a linear layer whose weight is stored
    transposed, ``(in, out)``; known by its ``nf`` (out features) and 2-d weight, so
    that ablagen need not import transformers."""
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(getattr(module, "nf", None), int)
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 2
        and weight.shape[1] == module.nf
    )


def in_out_features(module: nn.Module) -> tuple[int, int] | None:
    """``(in, out)`` features of a Linear or a Conv1D, else None."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if is_conv1d(module):
        return int(module.weight.shape[0]), int(module.weight.shape[1])
    return None


def unit_count(module: nn.Module) -> tuple[int, int] | None:
    """``(units, dim)`` for a maskable layer, else None."""
    if is_conv1d(module):
        return int(module.nf), -1
    for cls, dim in UNIT_LAYERS.items():
        if type(module) is cls or isinstance(module, cls):
            units = (
                module.out_features
                if isinstance(module, nn.Linear)
                else module.out_channels
            )
            return int(units), dim
    return None


def is_activation_module(module: nn.Module) -> bool:
    """A known activation class, or a module that behaves like one (see
    :func:`ablagen.analyze.behaviour.acts_like_activation`): GELU variants,
    QuickGELU, Swish, ... written as custom classes (Hugging Face's ``ACT2FN``)."""
    if isinstance(module, ACTIVATION_MODULES):
        return True
    from ablagen.analyze.behaviour import acts_like_activation

    return acts_like_activation(module)


def own_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
