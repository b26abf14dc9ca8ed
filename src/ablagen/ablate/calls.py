"""Ablating a functional call (``F.gelu(h)``, ``h.relu()``) in a model torch.fx cannot
trace: a call-site edit at run time.

While module ``owner`` runs, a torch-function mode sees every torch function it calls;
the ``index``-th call of activation ``op`` made by ``owner`` itself (not by its
submodules: their forward hooks pause the count) gets its output replaced. This is
the call torch.export listed as ``fn.<owner>.<op>@<index>``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .operators import Ablation

#: torch functions and tensor methods by the activation they compute (the names
#: torch.export's aten ops carry, in-place ``_`` dropped)
CALL_NAMES = {
    F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu_: "relu",
    torch.Tensor.relu: "relu", torch.Tensor.relu_: "relu",
    F.gelu: "gelu", F.silu: "silu", F.mish: "mish", F.elu: "elu", F.selu: "selu",
    torch.selu: "selu", F.celu: "celu", torch.celu: "celu",
    F.leaky_relu: "leaky_relu", F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid",
    F.softplus: "softplus", F.hardtanh: "hardtanh", F.relu6: "hardtanh",
    torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.Tensor.sigmoid: "sigmoid",
    torch.Tensor.sigmoid_: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh",
    torch.Tensor.tanh: "tanh", torch.Tensor.tanh_: "tanh",
}  # fmt: skip


class _CallSiteMode(torch.overrides.TorchFunctionMode):
    def __init__(self, site):
        super().__init__()
        self.site = site

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        site = self.site
        hit = False
        if site.depth == 0 and CALL_NAMES.get(func) == site.call_op:
            hit, site.seen = site.seen == site.index, site.seen + 1
        if not hit:
            return func(*args, **kwargs)
        if kwargs.get("inplace"):  # the input must stay what it was
            kwargs = {**kwargs, "inplace": False}
        source = args[0] if args else None
        if site.op.passes_input:
            return source
        return site.op(func(*args, **kwargs), source)


class CallSiteHook:
    """The hooks of one call-site edit (a class, not closures: deep copies copy it)."""

    def __init__(self, call_op, index, op):
        self.call_op, self.index, self.op = call_op, index, op
        self.depth, self.seen, self.modes = 0, 0, []

    def enter(self, module, inputs):
        self.depth, self.seen = 0, 0
        mode = _CallSiteMode(self)
        mode.__enter__()
        self.modes.append(mode)

    def exit(self, module, inputs, output):
        if self.modes:
            self.modes.pop().__exit__(None, None, None)

    def pause(self, module, inputs):
        self.depth += 1

    def resume(self, module, inputs, output):
        self.depth -= 1


def ablate_call(model: nn.Module, owner: str, call_op: str, index: int, op: Ablation):
    """Ablate the ``index``-th ``call_op`` call made by module ``owner`` with ``op``."""
    module = model.get_submodule(owner)
    children = list(module.children())
    where = (owner.replace(".", "_") or "model") + f"_{call_op}{index}"
    model.add_module(f"ablation_{op.name}_{where}", op)
    hook = CallSiteHook(call_op, index, op)
    for child in children:
        child.register_forward_pre_hook(hook.pause)
        child.register_forward_hook(hook.resume, always_call=True)
    module.register_forward_pre_hook(hook.enter)
    return module.register_forward_hook(hook.exit, always_call=True)
