"""Issue #30.6: zeroing a component cuts off, with its own parameters, those upstream
whose only way to the output ran through it; ABLATED_PARAMS counts them all. The
reference is torch's autograd: the parameters a zeroed output leaves unused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ablagen.analyze.inventory import build_inventory
from ablagen.generate.variants import ablation_spec
from ablagen.arms.hybrid import counted_once


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 16, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(torch.flatten(x, 1))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(5, 6)
        self.inner = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = self.stem(x)
        return self.head(F.relu(self.inner(h)) + h)


def _unused_by_autograd(model, x, module_name):
    """Parameter count autograd finds unused when ``module_name`` outputs zeros."""
    module = model.get_submodule(module_name)
    handle = module.register_forward_hook(lambda m, a, out: torch.zeros_like(out))
    try:
        params = [p for p in model.parameters()]
        out = model(x).sum()
        if not out.requires_grad:  # the output itself was cut off: nothing is used
            return sum(p.numel() for p in params)
        grads = torch.autograd.grad(out, params, allow_unused=True)
    finally:
        handle.remove()
    return sum(p.numel() for p, g in zip(params, grads) if g is None)


@pytest.mark.parametrize(
    ("model", "shape"), [(Chain(), (2, 1, 8, 8)), (Residual(), (2, 5))]
)
def test_zeroed_layer_counts_what_autograd_leaves_unused(model, shape):
    x = torch.randn(*shape)
    model.eval()
    inv = build_inventory(model, (x,))
    layers = [c for c in inv.components if c.kind == "layer" and "zero" in c.methods]
    assert layers
    for comp in layers:
        expected = _unused_by_autograd(model, x, comp.module)
        assert ablation_spec(comp, "zero").ablated_params == expected, comp.id


def test_conv2_zero_cuts_conv1_and_bn1_but_identity_and_mean_do_not():
    inv = build_inventory(Chain().eval(), (torch.randn(2, 1, 8, 8),))
    conv2 = inv.get("conv2")
    upstream = sum(inv.get(c).params for c in ("conv1", "bn1"))
    assert ablation_spec(conv2, "zero").ablated_params == conv2.params + upstream
    assert ablation_spec(conv2, "mean").ablated_params == conv2.params
    bn1 = inv.get("bn1")
    assert ablation_spec(bn1, "identity").ablated_params == bn1.params
    # a functional activation between them: zeroing it cuts conv1 and bn1
    relu = inv.get("fn.relu")
    assert ablation_spec(relu, "zero").ablated_params == upstream
    # the residual's inner layer: the stem still reaches the head around it
    res = build_inventory(Residual().eval(), (torch.randn(2, 5),))
    assert res.get("inner").cut_params is None
    assert res.get("stem").cut_params is None  # only its own
    assert ablation_spec(res.get("head"), "zero").ablated_params == sum(
        p.numel() for p in Residual().parameters()
    )


def test_removed_together_each_parameter_counts_once():
    inv = build_inventory(Chain().eval(), (torch.randn(2, 1, 8, 8),))
    conv1, bn1, conv2 = inv.get("conv1"), inv.get("bn1"), inv.get("conv2")
    specs = counted_once(inv, [(conv2, "zero"), (conv1, "zero"), (bn1, "identity")])
    assert [s.ablated_params for s in specs] == [
        conv1.params + bn1.params + conv2.params,
        0,
        0,
    ]
    specs = counted_once(inv, [(bn1, "identity"), (conv2, "zero")])
    assert (
        sum(s.ablated_params for s in specs) == conv1.params + bn1.params + conv2.params
    )


@pytest.mark.parametrize("example", ["resnet_small.py", "tiny_gpt.py"])
def test_examples_zeroed_layers_match_autograd(example):
    """Branches, residual adds, attention reading x.size(): a shape read carries no
    values, so a LayerNorm read only by qkv and by size() is cut off with qkv."""
    from ablagen.analyze.loading import load_model
    from conftest import EXAMPLES

    loaded = load_model(str(EXAMPLES / example))
    model, inputs = loaded.model, loaded.example_inputs
    inv = build_inventory(model, inputs)
    checked = 0
    for comp in inv.components:
        if (
            comp.kind != "layer"
            or "zero" not in comp.methods
            or comp.call_site is not None
        ):
            continue
        module = model.get_submodule(comp.module)
        handle = module.register_forward_hook(lambda m, a, out: torch.zeros_like(out))
        try:
            params = [p for p in model.parameters() if p.requires_grad]
            out = model(*inputs)
            out = (out if isinstance(out, torch.Tensor) else out[0]).float().sum()
            grads = (
                torch.autograd.grad(out, params, allow_unused=True)
                if out.requires_grad
                else [None] * len(params)
            )
        finally:
            handle.remove()
        unused = sum(p.numel() for p, g in zip(params, grads) if g is None)
        assert ablation_spec(comp, "zero").ablated_params == unused, comp.id
        checked += 1
    assert checked >= 10
