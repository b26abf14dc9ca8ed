"""Knockout of a transformer: every attention head and every MLP neuron group of
examples/tiny_gpt.py, the engine's fast path against a fresh copy per ablation.

The tiny GPT (2 layers, 4 heads each, MLP width 128 in 32 groups of 4) is trained
briefly on its copy task; then every head (mask) and every ``h.*.mlp.fc`` group (mask)
is scored on the 400 validation sequences, side by side in one process:

(a) fast path: ``run_knockouts`` (cached activations, only what follows the ablated
    value recomputed, the ablations of one site stacked along the batch);
(b) naive loop: ``evaluate_naive``, a deep copy with a hook per ablation.

Both must agree within 1e-5. ``python benchmarks/bench_knockout.py --gpt``
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ablagen.analyze import build_inventory
from ablagen.generate.knockout_mode import knockouts_for
from ablagen.generate.variants import ablation_spec
from ablagen.knockout_engine import (
    Validation,
    activation_means,
    evaluate_naive,
    run_knockouts,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_gpt.py"


def _correct(output: torch.Tensor, target: torch.Tensor) -> tuple[float, int]:
    return float((output.argmax(dim=1) == target).sum()), len(target)


def _example():
    spec = importlib.util.spec_from_file_location("tiny_gpt", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def trained(epochs: int):
    gpt = _example()
    x_train, y_train, x_val, y_val = gpt.build_data()
    torch.manual_seed(0)
    model = gpt.TinyGPT()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for start in range(0, len(x_train), 64):
            loss = F.cross_entropy(
                model(x_train[start : start + 64]), y_train[start : start + 64]
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval(), x_train, x_val, y_val


def run(epochs: int = 2, repeat: int = 3) -> int:
    model, x_train, x_val, y_val = trained(epochs)
    inventory = build_inventory(model, (x_val[:2],), "TinyGPT", None)
    chosen = [
        c
        for c in inventory.components
        if c.kind == "head" or (c.kind == "neuron" and ".mlp.fc[" in c.id)
    ]
    knockouts = knockouts_for(inventory, [ablation_spec(c, "mask") for c in chosen])
    heads = sum(c.kind == "head" for c in chosen)
    times = {"fast": [], "naive": []}
    for _ in range(repeat):
        started = time.perf_counter()
        fast = run_knockouts(
            model, knockouts, x_train, x_val, y_val, F.cross_entropy, _correct
        )
        times["fast"].append(time.perf_counter() - started)
        started = time.perf_counter()
        means = activation_means(model, knockouts, x_train)
        val = Validation(x_val, y_val, F.cross_entropy, _correct)
        naive = evaluate_naive(model, knockouts, means, val)
        times["naive"].append(time.perf_counter() - started)
    diff = max(
        abs(f.metrics.loss - n.metrics.loss)
        + abs(f.metrics.accuracy - n.metrics.accuracy)
        for f, n in zip(fast.scores, naive)
    )
    best = {k: min(v) for k, v in times.items()}
    paths = {s.path for s in fast.scores}
    print(f"## Knockout of a transformer: {EXAMPLE.name}, {len(knockouts)} ablations "
          f"({heads} heads, {len(knockouts) - heads} MLP neuron groups), "
          f"{len(x_val)} validation sequences, {torch.get_num_threads()} thread(s)\n")  # fmt: skip
    print("| path | wall (best of %d) | per ablation |" % repeat)
    print("|---|---:|---:|")
    for name in ("fast", "naive"):
        per = best[name] / len(knockouts) * 1e3
        print(f"| {name} | {best[name]:.3f} s | {per:.2f} ms |")
    print(f"\nspeed-up: {best['naive'] / best['fast']:.1f}x; fast path: {sorted(paths)}; "
          f"max |fast - naive| (loss + accuracy) = {diff:.1e}; "
          f"baseline val acc {fast.baseline.accuracy:.3f}")  # fmt: skip
    if diff > 1e-5 or paths != {"fast"}:
        print("FAILED: the fast path disagrees with the naive evaluation")
        return 1
    return 0
