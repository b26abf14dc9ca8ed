"""Exact inventories (ids, kinds, shapes, methods) for the reference models in tests/models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ablagen.analyze import analyze, build_inventory
from ablagen.analyze.inventory import neuron_ranges
from ablagen.analyze.loading import load_model
from conftest import EXAMPLES, MODELS

ALL = ("identity", "zero", "mean")
SHAPE_CHANGE = ("zero", "mean")


def rows(path: str, **kwargs):
    inv = analyze(load_model(str(MODELS / path)), **kwargs)
    return inv, [
        (c.id, c.kind, c.op, c.input_shape, c.output_shape, c.methods)
        for c in inv.components
    ]


def non_neurons(rows_):
    return [r for r in rows_ if r[1] != "neuron"]


def test_mlp_sequential():
    inv, got = rows("mlp.py")
    assert inv.traced and not inv.warnings
    assert non_neurons(got) == [
        ("0", "layer", "Linear", (2, 4), (2, 6), SHAPE_CHANGE),
        ("1", "activation", "Tanh", (2, 6), (2, 6), ALL),
        ("2", "layer", "Linear", (2, 6), (2, 3), SHAPE_CHANGE),
    ]
    neurons = [c for c in inv.components if c.kind == "neuron"]
    assert [c.id for c in neurons] == [f"0[{i}]" for i in range(6)] + [
        f"2[{i}]" for i in range(3)
    ]
    assert all(c.methods == ("mask",) for c in neurons)
    # params of one unit of Linear(4, 6): 4 weights + 1 bias
    assert neurons[0].params == 5 and neurons[0].unit_dim == -1


def test_cnn_with_module_and_functional_activations():
    inv, got = rows("cnn_mixed.py")
    assert non_neurons(got) == [
        ("conv", "layer", "Conv2d", (2, 1, 8, 8), (2, 4, 8, 8), SHAPE_CHANGE),
        ("act", "activation", "SiLU", (2, 4, 8, 8), (2, 4, 8, 8), ALL),
        ("fn.sigmoid", "activation", "sigmoid", (2, 4, 4, 4), (2, 4, 4, 4), ALL),
        ("fc", "layer", "Linear", (2, 64), (2, 5), SHAPE_CHANGE),
        (
            "fn.relu",
            "activation",
            "relu",
            (2, 5),
            (2, 5),
            ALL,
        ),  # x.relu(): a method call
    ]
    by_id = {c.id: c for c in inv.components}
    assert by_id["conv[2]"].units == (2, 3) and by_id["conv[2]"].unit_dim == 1
    assert (
        by_id["fn.sigmoid"].param_owner == "conv"
    )  # through max_pool2d to the producer
    assert by_id["fn.relu"].param_owner == "fc"


def test_residual_block_and_marks():
    inv, got = rows("residual.py")
    assert non_neurons(got) == [
        ("block", "block", "Block", (2, 3, 6), (2, 3, 6), ALL),
        ("block.lin", "layer", "Linear", (2, 3, 6), (2, 3, 6), ALL),
        ("fn.gelu", "activation", "gelu", (2, 3, 6), (2, 3, 6), ALL),
        ("out", "layer", "Linear", (2, 3, 6), (2, 3, 2), SHAPE_CHANGE),
    ]
    by_id = {c.id: c for c in inv.components}
    assert by_id["fn.gelu"].feeds_residual
    assert not by_id["block.lin"].feeds_residual
    assert by_id["block"].params == sum(p.numel() for p in nn.Linear(6, 6).parameters())


def test_module_reused_at_two_call_sites_is_two_components():
    inv, got = rows("reused.py")
    acts = [r for r in got if r[1] == "activation"]
    assert acts == [
        ("relu@0", "activation", "ReLU", (2, 5), (2, 5), ALL),
        ("relu@1", "activation", "ReLU", (2, 5), (2, 5), ALL),
    ]
    by_id = {c.id: c for c in inv.components}
    assert (by_id["relu@0"].call_site, by_id["relu@1"].call_site) == (0, 1)
    assert by_id["relu@0"].param_owner is None and by_id["relu@1"].param_owner == "a"
    assert [r[0] for r in non_neurons(got)] == [
        "relu@0",
        "a",
        "relu@1",
        "b",
    ]  # call order


def test_lstm_tuple_output_only_zero():
    inv, got = rows("lstm.py")
    assert non_neurons(got) == [
        ("embed", "layer", "Embedding", (2, 5), (2, 5, 8), SHAPE_CHANGE),
        ("lstm", "layer", "LSTM", (2, 5, 8), None, ("zero",)),
        ("head", "layer", "Linear", (2, 8), (2, 3), SHAPE_CHANGE),
    ]
    lstm = nn.LSTM(8, 8, batch_first=True)
    assert inv.get("lstm").params == sum(p.numel() for p in lstm.parameters())


def test_untraceable_model_falls_back_to_hooks_with_one_warning():
    inv, got = rows("dynamic.py")
    assert not inv.traced
    assert len(inv.warnings) == 1 and "functional activations" in inv.warnings[0]
    assert non_neurons(got) == [
        ("a", "layer", "Linear", (2, 4), (2, 4), ALL),
        ("act", "activation", "ReLU", (2, 4), (2, 4), ALL),
        ("b", "layer", "Linear", (2, 4), (2, 2), SHAPE_CHANGE),
    ]
    assert inv.get("act").param_owner == "a"


@pytest.mark.parametrize(
    ("units", "groups", "expected"),
    [
        (6, None, [(i, i + 1) for i in range(6)]),
        (10, 3, [(0, 4), (4, 7), (7, 10)]),
        (4, 10, [(0, 1), (1, 2), (2, 3), (3, 4)]),
        (64, None, [(2 * i, 2 * i + 2) for i in range(32)]),
    ],
)
def test_neuron_ranges(units, groups, expected):
    assert neuron_ranges(units, groups) == expected


def test_neuron_groups_option_and_params():
    inv, _ = rows("mlp.py", neuron_groups=2)
    groups = [c for c in inv.components if c.kind == "neuron" and c.module == "0"]
    assert [(c.id, c.units, c.params) for c in groups] == [
        ("0[0:3]", (0, 3), 15),
        ("0[3:6]", (3, 6), 15),
    ]


class _WideThenMore(nn.Module):
    """A layer of 1,200 units, then a functional activation, a block and a layer."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 1200)
        self.block = nn.Sequential(nn.Tanh())
        self.fc2 = nn.Linear(1200, 2)

    def forward(self, x):
        return self.fc2(self.block(self.fc1(x).relu()))


def test_order_holds_with_more_than_a_thousand_groups():
    inv = build_inventory(_WideThenMore(), (torch.zeros(2, 3),), neuron_groups=1200)
    assert inv.traced
    # graph order: each layer, then its groups in unit order; a block opens before
    # its first node
    expected = (
        ["fc1"]
        + [f"fc1[{i}]" for i in range(1200)]
        + ["fn.relu", "block", "block.0", "fc2", "fc2[0]", "fc2[1]"]
    )
    assert [c.id for c in inv.components] == expected
    groups = [c.units for c in inv.components if c.module == "fc1" and c.units]
    assert groups == [(i, i + 1) for i in range(1200)]


def test_parameters_listed_match_named_parameters():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    inv = build_inventory(model, (torch.zeros(2, 3),))
    assert inv.parameters == tuple(
        (n, tuple(p.shape)) for n, p in model.named_parameters()
    )


def test_examples_trace():
    for name in ("digits_cnn.py", "tabular_mlp.py", "resnet_small.py"):
        inv = analyze(load_model(str(EXAMPLES / name)))
        assert inv.traced, name
    resnet = analyze(load_model(str(EXAMPLES / "resnet_small.py")))
    blocks = [c.id for c in resnet.components if c.kind == "block"]
    assert blocks == ["layer1", "layer1.0", "layer1.1", "layer2"]
    acts = [c.id for c in resnet.components if c.kind == "activation"]
    assert acts == ["stem.2"] + [
        f"fn.relu{s}" for s in ("", "_1", "_2", "_3", "_4", "_5", "_6")
    ]


def test_json_is_stable():
    first = analyze(load_model(str(MODELS / "cnn_mixed.py"))).to_json()
    second = analyze(load_model(str(MODELS / "cnn_mixed.py"))).to_json()
    assert first == second
    assert first["components"][0]["input_shape"] == [2, 1, 8, 8]
