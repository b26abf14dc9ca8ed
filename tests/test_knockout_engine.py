"""The knockout engine's fast path scores exactly what a fresh ablated copy scores.

The reference is the naive path: one fresh deep copy of the model per ablation, a
forward hook on the module (or, for a functional call, an edited torch.fx graph), and
the whole validation set run through it. Models are briefly initialised (BatchNorm
statistics from a few train-mode passes), not trained; data is small and synthetic.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from ablagen.analyze import analyze
from ablagen.generate.knockout_mode import knockouts_for
from ablagen.generate.knockout_block import knockout_block_source
from ablagen.generate.variants import ablation_spec
from ablagen.knockout_engine import (
    Knockout,
    Validation,
    activation_means,
    evaluate_fast,
    evaluate_naive,
    inspect_graph,
    run_knockouts,
)
from ablagen.analyze.loading import load_model
from conftest import EXAMPLES, MODELS

TOLERANCE = 1e-5


@pytest.fixture(autouse=True)
def one_thread():
    """Two intra-op threads on a shared 2-core machine spin-wait; one is faster here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def correct(output: torch.Tensor, target: torch.Tensor) -> tuple[float, int]:
    return float((output.argmax(dim=1) == target).sum()), len(target)


def _data(
    shape: tuple[int, ...],
    n: int,
    seed: int,
    classes: int = 10,
    tokens: int | None = None,
):
    g = torch.Generator().manual_seed(seed)
    x = (
        torch.randint(0, tokens, (n, *shape), generator=g)
        if tokens
        else torch.randn(n, *shape, generator=g)
    )
    return x, torch.randint(0, classes, (n,), generator=g)


def _prepared(path: str, neuron_groups: int | None = None):
    """(model in eval mode, every knockout of every component and method, data)."""
    loaded = load_model(path)
    inventory = analyze(loaded, neuron_groups)
    model = loaded.model
    shape = tuple(loaded.example_inputs[0].shape[1:])
    x_train, _ = _data(shape, 64, 1)
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():  # BatchNorm running statistics that are not the identity
        for _ in range(3):
            model(x_train)
    model.eval()
    specs = [ablation_spec(c, m) for c in inventory.components for m in c.methods]
    return (
        model,
        inventory,
        knockouts_for(inventory, specs),
        x_train,
        *_data(shape, 40, 2),
    )


def _assert_same(fast, naive) -> None:
    assert [s.variant_id for s in fast] == [s.variant_id for s in naive]
    for f, n in zip(fast, naive):
        assert f.status == n.status == "ok", (f, n)
        assert abs(f.metrics.loss - n.metrics.loss) <= TOLERANCE, (f, n)
        assert abs(f.metrics.accuracy - n.metrics.accuracy) <= TOLERANCE, (f, n)


@pytest.mark.parametrize(
    ("model_file", "groups"), [("resnet_small.py", 4), ("digits_cnn.py", None)]
)
def test_fast_path_equals_a_fresh_copy_per_ablation(model_file, groups):
    model, inventory, knockouts, x_train, x_val, y_val = _prepared(
        str(EXAMPLES / model_file), groups
    )
    kinds = {c.kind for c in inventory.components}
    assert (
        kinds == {"layer", "block", "activation", "neuron"}
        or model_file == "digits_cnn.py"
    )
    assert any(k.module is None for k in knockouts) and any(k.units for k in knockouts)
    means = activation_means(model, knockouts, x_train, 32)
    val = Validation(x_val, y_val, F.cross_entropy, correct, batch_size=16)
    fast = evaluate_fast(model, knockouts, means, val)
    assert (
        fast.stats["max_copies"] > 1 and fast.stats["chunk_samples"] == 16
    )  # stacked, chunked
    naive = evaluate_naive(model, knockouts, means, val)
    _assert_same(fast.scores, naive)
    with torch.no_grad():
        chunks = [(x_val[i : i + 16], y_val[i : i + 16]) for i in (0, 16, 32)]
        loss = sum(
            float(F.cross_entropy(model(x), y)) * len(y) for x, y in chunks
        ) / len(y_val)
    assert abs(fast.baseline.loss - loss) <= TOLERANCE
    assert all(s.path == "fast" for s in fast.scores)


def test_hooks_and_graph_edits_agree_on_what_a_module_ablation_is():
    """Blocks, call sites and neurons resolve to the graph nodes their hooks replace."""
    model, _, knockouts, x_train, x_val, y_val = _prepared(
        str(EXAMPLES / "resnet_small.py"), 2
    )
    modular = [k for k in knockouts if k.module is not None]
    graph_means = activation_means(model, modular, x_train, 32, traced=True)
    hook_means = activation_means(model, modular, x_train, 32, traced=False)
    assert graph_means.keys() == hook_means.keys() and graph_means
    assert all(
        torch.allclose(graph_means[k], hook_means[k], atol=1e-6) for k in graph_means
    )
    val = Validation(x_val, y_val, F.cross_entropy, correct)
    hooks = evaluate_naive(model, modular, graph_means, val, via="hooks")
    edits = evaluate_naive(model, modular, graph_means, val, via="graph")
    _assert_same(hooks, edits)


@pytest.mark.parametrize("model_file", ["lstm.py", "reused.py"])
def test_tuple_outputs_and_modules_called_twice(model_file):
    loaded = load_model(str(MODELS / model_file))
    inventory = analyze(loaded)
    model = loaded.model.eval()
    specs = [ablation_spec(c, m) for c in inventory.components for m in c.methods]
    knockouts = knockouts_for(inventory, specs)
    assert any(k.call_site == 1 for k in knockouts) or model_file == "lstm.py"
    tokens = 20 if model_file == "lstm.py" else None
    shape = tuple(loaded.example_inputs[0].shape[1:])
    x_train, _ = _data(shape, 32, 1, tokens=tokens)
    x_val, y_val = _data(
        shape, 24, 2, classes=2 if model_file == "reused.py" else 3, tokens=tokens
    )
    means = activation_means(model, knockouts, x_train)
    val = Validation(x_val, y_val, F.cross_entropy, correct, batch_size=8)
    fast = evaluate_fast(model, knockouts, means, val)
    _assert_same(fast.scores, evaluate_naive(model, knockouts, means, val))


class InPlaceBlock(nn.Module):
    """torchvision's BasicBlock pattern: one in-place ReLU called twice, an in-place add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out.add_(x)
        return self.relu(out)


class InPlaceNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.blocks = nn.Sequential(InPlaceBlock(), InPlaceBlock())
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.stem(x), inplace=True))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ReadsAfterWrite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        torch.relu_(h[:, :2])  # writes into h through a view, and h is read below
        return self.fc2(h)


class BatchCoupled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(
            torch.relu(h - h.mean(dim=0, keepdim=True))
        )  # mixes the samples


def _graph_knockouts(model: nn.Module) -> list[Knockout]:
    """Every node-level knockout of a model: call sites, functional calls, neurons, blocks."""
    found: list[Knockout] = []
    calls: dict[str, int] = {}
    for node in fx.symbolic_trace(model).graph.nodes:
        module = str(node.target) if node.op == "call_module" else None
        site = None
        if module is not None:
            site = calls[module] = calls.get(module, -1) + 1
        if node.op in ("call_module", "call_function", "call_method"):
            for method in ("zero", "mean", "identity"):
                found.append(
                    Knockout(
                        f"{node.name}:{method}",
                        method,
                        module=module,
                        node=node.name,
                        call_site=site,
                    )
                )
    for name, sub in model.named_modules():
        if isinstance(sub, (nn.Conv2d, nn.Linear)):
            found.append(
                Knockout(
                    f"{name}[1]:mask", "mask", module=name, units=(1, 2), unit_dim=1
                )
            )
        if isinstance(sub, InPlaceBlock) or name == "blocks":
            found += [
                Knockout(f"{name}:{m}", m, module=name, block=True)
                for m in ("identity", "zero", "mean")
            ]
    return found


def _shapes_kept(
    model: nn.Module, knockouts: list[Knockout], x: torch.Tensor
) -> list[Knockout]:
    """The identity knockouts whose node keeps its input's shape (like the inventory's)."""
    labels = torch.zeros(len(x), dtype=torch.long)
    means = activation_means(model, knockouts, x)
    val = Validation(x, labels, F.cross_entropy, correct)
    scores = evaluate_naive(model, knockouts, means, val, via="graph")
    return [k for k, s in zip(knockouts, scores) if s.status == "ok"]


def test_in_place_writes_leave_the_cache_clean():
    torch.manual_seed(0)
    model = InPlaceNet().eval()
    x_train, _ = _data((1, 6, 6), 32, 1)
    x_val, y_val = _data((1, 6, 6), 20, 2, classes=3)
    facts = inspect_graph(fx.symbolic_trace(model), x_val)
    assert facts.mutates and facts.unsafe is None
    knockouts = _shapes_kept(model, _graph_knockouts(model), x_train)
    assert len(knockouts) > 40
    means = activation_means(model, knockouts, x_train)
    val = Validation(x_val, y_val, F.cross_entropy, correct, batch_size=8)
    fast = evaluate_fast(model, knockouts, means, val)
    naive = evaluate_naive(model, knockouts, means, val, via="graph")
    _assert_same(fast.scores, naive)


@pytest.mark.parametrize("cls", [ReadsAfterWrite, BatchCoupled])
def test_models_the_cache_cannot_serve_still_score_exactly(cls):
    torch.manual_seed(0)
    model = cls().eval()
    x_train, _ = _data((4,), 32, 1)
    x_val, y_val = _data((4,), 20, 2, classes=2)
    knockouts = _shapes_kept(model, _graph_knockouts(model), x_train)
    report = run_knockouts(
        model, knockouts, x_train, x_val, y_val, F.cross_entropy, correct, batch_size=8
    )
    means = activation_means(model, knockouts, x_train, 8)
    val = Validation(x_val, y_val, F.cross_entropy, correct, batch_size=8)
    naive = evaluate_naive(model, knockouts, means, val)
    _assert_same(report.scores, naive)
    if cls is ReadsAfterWrite:  # a value read after an in-place write: no cache at all
        assert report.path == "naive" and "writes into" in report.notes[0]
    else:  # samples are mixed: the cache serves, but copies are never stacked
        assert report.path == "fast" and report.stats["max_copies"] == 1


def test_memory_budget_bounds_the_cache_and_the_stacks():
    model, _, knockouts, x_train, x_val, y_val = _prepared(
        str(EXAMPLES / "digits_cnn.py"), 4
    )
    means = activation_means(model, knockouts, x_train)
    budget_mb = 0.5
    val = Validation(x_val, y_val, F.cross_entropy, correct, batch_size=64)
    small = evaluate_fast(model, knockouts, means, val, max_batch_mb=budget_mb)
    roomy = evaluate_fast(model, knockouts, means, val, max_batch_mb=256)
    assert small.stats["chunk_samples"] < roomy.stats["chunk_samples"]
    assert (
        small.stats["cache_peak_bytes"] + small.stats["stack_peak_bytes"]
        <= budget_mb * 2**20
    )
    _assert_same(small.scores, roomy.scores)


def test_embedded_block_scores_exactly_like_the_library(tmp_path):
    path = tmp_path / "embedded_engine.py"
    path.write_text(knockout_block_source())
    spec = importlib.util.spec_from_file_location("embedded_engine", path)
    embedded = importlib.util.module_from_spec(spec)
    sys.modules["embedded_engine"] = embedded
    try:
        spec.loader.exec_module(embedded)
        model, _, knockouts, x_train, x_val, y_val = _prepared(
            str(EXAMPLES / "digits_cnn.py"), 2
        )
        copies = [embedded.Knockout(**vars(k)) for k in knockouts]
        ours = run_knockouts(
            model, knockouts, x_train, x_val, y_val, F.cross_entropy, correct, 16
        )
        theirs = embedded.run_knockouts(
            model, copies, x_train, x_val, y_val, F.cross_entropy, correct, 16
        )
    finally:
        del sys.modules["embedded_engine"]
    assert [
        (s.variant_id, s.metrics.loss, s.metrics.accuracy) for s in ours.scores
    ] == [(s.variant_id, s.metrics.loss, s.metrics.accuracy) for s in theirs.scores]
    assert (
        ours.baseline.loss == theirs.baseline.loss
        and ours.path == theirs.path == "fast"
    )
