"""The ablation operators: what an ablated output becomes, one class per method.

An operator is a small ``nn.Module``: ``op(output, source)`` (its ``forward``) takes
the unablated output and the value the ablated op was given (its input: what
``identity`` passes on) and returns the output that goes on in its place. As a module,
one with state (the running mean) follows ``.to(device)`` and ``.eval()`` once it has
joined the model, and a traced graph can call any of them as a node. Operators define
no other method that ``nn.Module`` has: ``model.apply(fn)`` still means what it means.
"""

import torch
from torch import nn


class Ablation(nn.Module):
    """An ablation operator; ``passes_input``: the op is skipped, its input goes on."""

    name = "ablation"
    passes_input = False


class IdentityAblation(Ablation):
    """Skip the op: its input goes on in place of its output (only where shapes match)."""

    name = "identity"
    passes_input = True

    def forward(self, output, source=None):
        return source


class ZeroAblation(Ablation):
    """The op still runs; zeros go on in place of its output (each tensor of a tuple)."""

    name = "zero"

    def forward(self, output, source=None):
        if isinstance(output, torch.Tensor):
            return torch.zeros_like(output)
        if isinstance(output, dict):
            return {key: self(value) for key, value in output.items()}
        if isinstance(output, (tuple, list)):
            items = [self(item) for item in output]
            is_named = hasattr(output, "_fields")  # a namedtuple takes its fields apart
            return type(output)(*items) if is_named else type(output)(items)
        return output  # not a tensor: nothing to zero


class MeanAblation(Ablation):
    """The output replaced by its mean over the samples: one constant for every sample.
    Training: the batch mean (gradients flow), kept as a running mean like BatchNorm's;
    evaluation: that running mean, or the per-position ``mean`` given (knockout)."""

    name = "mean"

    def __init__(self, mean=None, momentum=0.1):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("running", mean)

    def forward(self, output, source=None):
        if self.training or self.running is None:
            mean = output.mean(dim=0)
            if self.training:
                track_mean(self, mean)
        else:
            mean = self.running.to(output.dtype)
        return mean.expand_as(output).contiguous()


def track_mean(op, mean):
    """Fold a training batch's ``mean`` into ``op.running``, a running mean with
    ``op.momentum`` like BatchNorm's statistics (the first batch starts it)."""
    with torch.no_grad():
        old = mean.detach() if op.running is None else op.running
        op.running = (1 - op.momentum) * old + op.momentum * mean.detach()


class MaskAblation(Ablation):
    """Output units ``start .. stop-1`` along ``dim`` set to zero, the others kept."""

    name = "mask"

    def __init__(self, dim, start, stop):
        super().__init__()
        self.dim, self.start, self.stop = dim, start, stop

    def forward(self, output, source=None):
        output = output.clone()
        output.narrow(self.dim, self.start, self.stop - self.start).zero_()
        return output


#: the registry: every ablation method by name (as Torch-Pruning keeps its pruners)
ABLATIONS: dict[str, type[Ablation]] = {
    op.name: op for op in (IdentityAblation, ZeroAblation, MeanAblation, MaskAblation)
}
