"""Apply a pruning plan with plain torch: the code every ``pruned_<ratio>.py`` carries.

A plan maps a module's name to the indices it keeps, ``{"out": [...], "in": [...]}``:
``out`` along its output channels (dim 0 of a weight, and every per-channel vector:
bias, BatchNorm's running statistics), ``in`` along its input channels (dim 1 of a
weight); an attention module that lost heads also names the attributes that hold
its head count and width, ``{"set": {"num_attention_heads": 2, ...}}``. Torch-Pruning found the groups and chose the indices when the script was
written; the script only slices tensors, so it reads without Torch-Pruning and
runs without it. This module is stdlib + torch only: it is pasted into the scripts
verbatim (and imported by ablagen's tests, so both run the same code).
"""

import torch
from torch import nn


def prune_module(module, out=None, into=None):
    """Keep the output channels ``out`` and the input channels ``into`` of one layer."""
    tensors = list(module.named_parameters(recurse=False))
    tensors += list(module.named_buffers(recurse=False))
    for name, tensor in tensors:
        if tensor is None or tensor.dim() == 0:  # BatchNorm's num_batches_tracked
            continue
        kept = tensor.detach()
        if out is not None:
            kept = kept.index_select(0, torch.tensor(out, device=kept.device))
        if into is not None and kept.dim() >= 2:
            kept = kept.index_select(1, torch.tensor(into, device=kept.device))
        if isinstance(tensor, nn.Parameter):
            setattr(module, name, nn.Parameter(kept.clone(), tensor.requires_grad))
        else:
            setattr(module, name, kept.clone())
    if isinstance(module, nn.modules.conv._ConvNd):
        module.out_channels = module.weight.shape[0]
        module.in_channels = module.weight.shape[1] * module.groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        module.num_features = len(out) if out is not None else module.num_features
    elif isinstance(module, nn.LayerNorm) and out is not None:
        module.normalized_shape = (len(out),)


def apply_plan(model, plan):
    """``model`` with every layer in ``plan`` sliced to its kept channels and every
    attention module's head count set (in place)."""
    modules = dict(model.named_modules())
    for name, kept in plan.items():
        if "out" in kept or "in" in kept:
            prune_module(modules[name], kept.get("out"), kept.get("in"))
        for attr, value in kept.get("set", {}).items():
            setattr(modules[name], attr, value)
    return model


@torch.no_grad()
def recalibrate_norms(model, x, batch_size):
    """BatchNorm's running statistics measured again on ``x`` (the training data):
    removing channels shifts what the next layers see, and stale statistics alone
    can cost most of the accuracy. Everything else stays in eval mode."""
    norms = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    if not norms:
        return model
    model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the batches below
        m.train()
    for start in range(0, len(x), batch_size):
        model(x[start : start + batch_size])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()
