"""Attention heads: one head's slice of the attention output, ablated before the
output projection.

Every attention implementation ablagen recognises concatenates its heads head-major
in the last dimension of the output projection's input, so head ``h`` of ``n`` is
the slice ``[h*d, (h+1)*d)`` with ``d = width // n``. The operators below replace
that slice; :func:`ablate_head` puts one in front of the projection: a forward
pre-hook on it, or -- for ``nn.MultiheadAttention``, whose functional forward
projects inside -- a torch-function mode around the attention module that lifts the
projection out of ``F.multi_head_attention_forward`` (it also turns off MHA's fused
fast path).
"""

import torch
import torch.nn.functional as F
from torch import nn

from .operators import Ablation, track_mean


class HeadAblation(Ablation):
    """Head ``head`` of ``num_heads``: the slice of the last dim that one head owns."""

    def __init__(self, num_heads, head):
        super().__init__()
        self.num_heads, self.head = num_heads, head

    def span(self, value):
        width = value.shape[-1] // self.num_heads
        return self.head * width, width

    def forward(self, output, source=None):
        start, width = self.span(output)
        output = output.clone()
        output.narrow(-1, start, width).copy_(
            self.value(output.narrow(-1, start, width))
        )
        return output


class HeadMaskAblation(HeadAblation):
    """The head's output set to zero (its heads' share of the projection removed)."""

    name = "mask"

    def value(self, head_output):
        return torch.zeros_like(head_output)


class HeadMeanAblation(HeadAblation):
    """The head's output replaced by its mean over the batch and the positions: one
    vector of the head's width. Training: the batch mean (gradients flow), kept as a
    running mean; evaluation: that running mean, or the ``mean`` given (knockout)."""

    name = "mean"

    def __init__(self, num_heads, head, mean=None, momentum=0.1):
        super().__init__(num_heads, head)
        self.momentum = momentum
        self.register_buffer("running", mean)

    def value(self, head_output):
        if self.training or self.running is None:
            mean = head_output.reshape(-1, head_output.shape[-1]).mean(dim=0)
            if self.training:
                track_mean(self, mean)
        else:
            mean = self.running.to(head_output.dtype)
        return mean.expand_as(head_output)


#: the head operators by method (the registry the plan and the engine look up)
HEAD_ABLATIONS = {op.name: op for op in (HeadMaskAblation, HeadMeanAblation)}


class _ProjectionInput(torch.overrides.TorchFunctionMode):
    """Runs ``F.multi_head_attention_forward`` with an identity output projection (so
    it returns the heads side by side), applies ``op``, then projects with the real
    ``weight`` and bias: the same arithmetic, with the heads in reach."""

    def __init__(self, weight, op):
        super().__init__()
        self.weight, self.op = weight, op

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is not F.multi_head_attention_forward or len(args) < 13:
            return func(*args, **kwargs)
        args = list(args)
        weight, bias = args[11], args[12]
        if weight is not self.weight:
            return func(*args, **kwargs)
        args[11] = torch.eye(weight.shape[1], dtype=weight.dtype, device=weight.device)
        args[12] = None
        heads, attention = func(*args, **kwargs)
        return F.linear(self.op(heads), weight, bias), attention


class _ProjectionHook:
    """Hooks that apply ``op`` to the projection's input: a pre-hook on the projection,
    or (``weight`` given) a mode around the attention module that calls it
    functionally. Classes, not closures: a deep copy of the model copies them too."""

    def __init__(self, op, weight=None):
        self.op, self.weight, self.active = op, weight, []

    def __call__(self, module, inputs):
        return (self.op(inputs[0]),) + tuple(inputs[1:])

    def enter(self, module, inputs):
        mode = _ProjectionInput(self.weight, self.op)
        mode.__enter__()
        self.active.append(mode)

    def exit(self, module, inputs, output):
        if self.active:
            self.active.pop().__exit__(None, None, None)


def ablate_head(model: nn.Module, out_proj: str, op: Ablation):
    """Ablate one head with ``op`` (:data:`HEAD_ABLATIONS`) at the input of ``model``'s
    output projection ``out_proj``. Returns the hook's handle."""
    parent_name, _, child = out_proj.rpartition(".")
    parent = model.get_submodule(parent_name)
    where = out_proj.replace(".", "_") + f"_head{op.head}"
    model.add_module(f"ablation_head_{op.name}_{where}", op)
    if isinstance(parent, nn.MultiheadAttention) and child == "out_proj":
        hook = _ProjectionHook(op, parent.out_proj.weight)
        parent.register_forward_pre_hook(hook.enter)
        return parent.register_forward_hook(hook.exit, always_call=True)
    return model.get_submodule(out_proj).register_forward_pre_hook(_ProjectionHook(op))
