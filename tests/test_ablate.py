"""The ablation operators (``ablagen.ablate``) against hand-computed references.

Each test builds a tiny model, ablates it through the library, and compares its
output with the same forward pass written out by hand with the ablation applied.
The last tests cut operators out of the library source (as the retrain scripts
embed them) and check the cut code, run without ablagen, computes the same.
"""

from __future__ import annotations

import collections
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import ablagen.ablate
from ablagen.ablate import (
    ABLATIONS,
    HEAD_ABLATIONS,
    IdentityAblation,
    MaskAblation,
    MeanAblation,
    ZeroAblation,
    ablate_head,
    ablate_node,
    ablate_output,
    skip_node,
)
from ablagen.generate.embed import extract_definitions
from ablagen.knockout_engine import KNOCKOUT_METHODS

X = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Reused(nn.Module):
    """One in-place ReLU called twice (like torchvision's BasicBlock)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.relu(self.a(self.relu(x))))


class Functional(nn.Module):
    """A functional call, and an in-place one whose result is never used."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.a(x))
        h.tanh_()
        return self.b(h)


def _model(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return cls().eval()


def test_the_registry_holds_each_method_once_by_its_name():
    assert tuple(ABLATIONS) == ("identity", "zero", "mean", "mask")
    assert all(op.name == name for name, op in ABLATIONS.items())
    assert KNOCKOUT_METHODS == tuple(ABLATIONS)  # the engine takes the same methods


def test_zero_identity_and_mask_of_a_module_output():
    model = _model(MLP)
    h = model.fc1(X)
    cases = {
        ZeroAblation(): model.fc2(torch.zeros(5, 6)),
        IdentityAblation(): None,  # fc1 changes the shape: identity goes on act
        MaskAblation(1, 2, 4): model.fc2(
            torch.relu(torch.cat([h[:, :2], torch.zeros(5, 2), h[:, 4:]], dim=1))
        ),
    }
    for op, expected in cases.items():
        ablated = copy.deepcopy(model)
        name = "act" if isinstance(op, IdentityAblation) else "fc1"
        ablate_output(ablated, name, op)
        expected = model.fc2(h) if expected is None else expected
        assert torch.allclose(ablated(X), expected, atol=1e-6), op.name
        assert not torch.allclose(ablated(X), model(X)), op.name


def test_zero_keeps_the_structure_of_tuple_namedtuple_and_dict_outputs():
    Pair = collections.namedtuple("Pair", "out state")
    t = torch.ones(2, 3)
    zero = ZeroAblation()
    first, rest = zero((t, [t, 7]))
    assert torch.equal(first, torch.zeros(2, 3)) and isinstance(rest, list)
    assert torch.equal(rest[0], torch.zeros(2, 3)) and rest[1] == 7  # not a tensor
    got = zero(Pair(t, {"h": t}))
    assert isinstance(got, Pair) and torch.equal(got.out, torch.zeros(2, 3))
    assert torch.equal(got.state["h"], torch.zeros(2, 3))


def test_mean_is_the_batch_mean_in_training_then_the_running_mean():
    model = _model(MLP)
    ablated = copy.deepcopy(model)
    op = MeanAblation()
    ablate_output(ablated, "fc2", op)
    ablated.train()
    raw = model.fc2(model.act(model.fc1(X)))
    assert torch.allclose(ablated(X), raw.mean(dim=0).expand_as(raw), atol=1e-6)
    ablated.eval()  # the operator joined the model: it follows .eval()
    assert not op.training
    assert torch.allclose(ablated(X[:2]), raw.mean(dim=0).expand(2, 3), atol=1e-6)
    assert "ablation_mean_fc2.running" in ablated.state_dict()


def test_a_given_mean_is_used_as_it_is():
    mean = torch.tensor([1.0, -2.0, 0.5])
    op = MeanAblation(mean).eval()
    out = op(torch.randn(4, 3, dtype=torch.float64))
    assert out.dtype == torch.float64 and out.is_contiguous()
    assert torch.equal(out, mean.double().expand(4, 3))


def _reinit(module: nn.Module) -> None:
    """A user's init function for ``model.apply``: every Linear set to known values."""
    if isinstance(module, nn.Linear):
        nn.init.constant_(module.weight, 0.1)
        nn.init.constant_(module.bias, -0.05)


OPERATORS = {
    **{name: lambda op=op: op() for name, op in ABLATIONS.items() if name != "mask"},
    "mask": lambda: MaskAblation(1, 2, 4),
    **{f"head_{name}": lambda op=op: op(2, 1) for name, op in HEAD_ABLATIONS.items()},
}


@pytest.mark.parametrize("method", sorted(OPERATORS))
def test_model_apply_after_an_ablation_behaves_as_on_the_plain_model(method):
    """``model.apply(fn)`` on an ablated model is nn.Module's: ``fn`` reaches every
    module (the operator too, as a module) and sets the same weights as on the plain
    model, and the ablation still acts: operators define no ``apply`` of their own."""
    plain, ablated, op = _model(MLP), _model(MLP), OPERATORS[method]()
    if method.startswith("head_"):
        ablate_head(ablated, "fc2", op)  # fc2's input: 2 "heads" of 3 units
    else:
        ablate_output(ablated, "act", op)
    seen_plain, seen_ablated = [], []
    assert plain.apply(lambda m: seen_plain.append(type(m))) is plain
    assert ablated.apply(lambda m: seen_ablated.append(type(m))) is ablated
    assert seen_ablated == seen_plain[:-1] + [type(op), seen_plain[-1]]
    assert plain.apply(_reinit) is plain and ablated.apply(_reinit) is ablated
    for (name, want), (_, got) in zip(
        plain.named_parameters(), ablated.named_parameters(), strict=True
    ):
        assert torch.equal(got, want), name
    h = plain.act(plain.fc1(X))
    if method.startswith("head_"):
        expected = plain.fc2(op(h))
    else:
        expected = plain.fc2(op(h, plain.fc1(X)))
    assert torch.allclose(ablated(X), expected, atol=1e-6)
    assert not torch.allclose(ablated(X), plain(X))  # the ablation still acts


def test_a_call_site_is_ablated_alone_and_the_count_restarts_every_forward():
    model = _model(Reused)
    zeroed = copy.deepcopy(model)
    ablate_output(zeroed, "relu", ZeroAblation(), call_site=1)
    expected = model.b(torch.zeros(5, 4))
    assert torch.allclose(zeroed(X), expected) and torch.allclose(zeroed(X), expected)
    skipped = copy.deepcopy(model)
    ablate_output(skipped, "relu", IdentityAblation(), call_site=0)
    expected = model.b(torch.relu(model.a(X)))  # the in-place ReLU left X intact
    x = X.clone()
    assert torch.allclose(skipped(x), expected, atol=1e-6) and torch.equal(x, X)
    again = copy.deepcopy(skipped)  # the hook and its count are copied too
    assert torch.allclose(again(X.clone()), expected, atol=1e-6)


@pytest.mark.parametrize("method", ["identity", "zero", "mean"])
def test_a_functional_call_is_ablated_on_the_traced_graph(method):
    model = _model(Functional)
    traced = fx.symbolic_trace(copy.deepcopy(model))
    names = [n.name for n in traced.graph.nodes]
    relu = next(n for n in names if n.startswith("relu"))
    ablate_node(traced, relu, ABLATIONS[method]())
    traced.train()
    a = model.a(X)
    replaced = {"identity": a, "zero": torch.zeros_like(a), "mean": None}[method]
    if replaced is None:
        replaced = torch.relu(a).mean(dim=0).expand_as(a)
    assert torch.allclose(traced(X), model.b(torch.tanh(replaced)), atol=1e-6)


def test_an_in_place_call_is_ablated_where_its_input_is_read_later():
    model = _model(Functional)
    traced = fx.symbolic_trace(copy.deepcopy(model))
    tanh = next(n.name for n in traced.graph.nodes if n.name.startswith("tanh"))
    ablate_node(traced, tanh, ZeroAblation())
    assert torch.allclose(traced(X), model.b(torch.zeros(5, 4)), atol=1e-6)


def test_an_unknown_node_names_the_fix():
    traced = fx.symbolic_trace(_model(MLP))
    with pytest.raises(RuntimeError, match="regenerate"):
        ablate_node(traced, "nowhere", ZeroAblation())


def _standalone(code: str) -> dict:
    """``code`` run as a script would run it: torch only, ablagen not imported."""
    namespace: dict = {"__name__": "script"}
    exec(compile(code, "<script>", "exec"), namespace)  # noqa: S102
    assert not any(
        getattr(v, "__module__", "").startswith("ablagen") for v in namespace.values()
    )
    return namespace


def test_a_script_carries_only_the_operators_it_uses():
    code = extract_definitions(ablagen.ablate, ("ZeroAblation", "ablate_output"))
    assert "class Ablation(" in code and "class OutputHook" in code  # what they use
    for absent in ("MeanAblation", "MaskAblation", "IdentityAblation", "ablate_node"):
        assert absent not in code
    assert "fx" not in code.split("\n\n\n")[0]  # no import it does not need
    ns = _standalone(code)
    model = _model(MLP)
    ablated = copy.deepcopy(model)
    ns["ablate_output"](ablated, "fc1", ns["ZeroAblation"]())
    assert torch.equal(ablated(X), model.fc2(torch.zeros(5, 6)))


def test_cut_fx_code_edits_the_graph_like_the_library():
    code = extract_definitions(ablagen.ablate, ("IdentityAblation", "ablate_node"))
    assert "out_of_place" in code and "ZeroAblation" not in code
    ns = _standalone(code)
    model = _model(Functional)
    ours, theirs = (fx.symbolic_trace(copy.deepcopy(model)) for _ in range(2))
    relu = next(n.name for n in ours.graph.nodes if n.name.startswith("relu"))
    ablate_node(ours, relu, IdentityAblation())
    ns["ablate_node"](theirs, relu, ns["IdentityAblation"]())
    assert torch.equal(ours(X), theirs(X))
    assert torch.allclose(ours(X), model.b(torch.tanh(model.a(X))), atol=1e-6)


@pytest.mark.parametrize("prefix", ["relu", "tanh"])  # functional, then in place
def test_a_skipped_node_edits_the_graph_like_identity_and_carries_no_operator(prefix):
    code = extract_definitions(ablagen.ablate, ("skip_node",))
    for absent in ("class ", "out_of_place", "ablate_node("):
        assert absent not in code
    ns = _standalone(code)
    model = _model(Functional)
    ours, cut, identity = (fx.symbolic_trace(copy.deepcopy(model)) for _ in range(3))
    name = next(n.name for n in ours.graph.nodes if n.name.startswith(prefix))
    skip_node(ours, name)
    ns["skip_node"](cut, name)
    ablate_node(identity, name, IdentityAblation())
    assert ours.code == cut.code == identity.code
    hidden = model.a(X)  # relu skipped: tanh of it; tanh_ skipped: relu of it
    expected = model.b(torch.tanh(hidden) if prefix == "relu" else torch.relu(hidden))
    assert torch.allclose(ours(X), expected, atol=1e-6)
    with pytest.raises(RuntimeError, match="regenerate"):
        skip_node(ours, "nowhere")


def test_extracting_an_unknown_name_says_which():
    with pytest.raises(KeyError, match="Nothing"):
        extract_definitions(ablagen.ablate, ("Nothing",))
