"""The screen against exact knockout: accuracy per model and kind, and speed, in one run.

For each model (examples/digits_cnn.py, examples/resnet_small.py; a model with
attention where its file exists and trains on digits) the model is trained briefly
(Adam, lr 3e-3, on the digits split the generated scripts use), every layer, block,
activation and neuron group is knocked out exactly (``run_knockouts``) and estimated by
the screen, first order only and with the Gauss-Newton term. Reported: Spearman rho
of the estimated and the exact val_loss change, the exact top 10 found in the
screen's top 10 / 20 / 30, rho per component kind, and the largest misses.

Speed (resnet_small, 214 components): the screen, the exact fast path and the naive
loop (a fresh copy per knockout), best of --repeat, side by side in this process.

    python benchmarks/bench_screen.py [--epochs 3] [--repeat 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from bench_knockout import correct, digits  # noqa: E402

from ablagen.analysis import analyze  # noqa: E402
from ablagen.codegen.knockout import knockouts_for  # noqa: E402
from ablagen.codegen.plan import ablation_spec, plan_variants  # noqa: E402
from ablagen.knockout_engine import evaluate_naive, run_knockouts  # noqa: E402
from ablagen.knockout_engine.means import activation_means  # noqa: E402
from ablagen.loading import load_model  # noqa: E402
from ablagen.pipeline import spearman  # noqa: E402
from ablagen.screen import screen_knockouts  # noqa: E402

EXAMPLES = HERE.parent / "examples"
MODELS = ("digits_cnn", "resnet_small", "tiny_gpt")
KINDS = ("layer", "block", "activation", "neuron")
CURVATURES = ("none", "ggn")


def trained(name: str, epochs: int, data):
    loaded = load_model(str(EXAMPLES / f"{name}.py"))
    model, (x_train, y_train, _, _) = loaded.model, data
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        model.train()
        for i in range(0, len(x_train), 64):
            loss = F.cross_entropy(model(x_train[i : i + 64]), y_train[i : i + 64])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    inventory = analyze(loaded)
    specs = [ablation_spec(c, m) for c, m in plan_variants(inventory, KINDS)]
    return model.eval(), specs, knockouts_for(inventory, specs)


def best(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return min(times), out


def accuracy(name, model, specs, knockouts, data) -> list[str]:
    x_train, _, x_val, y_val = data
    exact_report = run_knockouts(
        model, knockouts, x_train, x_val, y_val, F.cross_entropy, correct
    )
    exact = {
        s.variant_id: s.metrics.loss - exact_report.baseline.loss
        for s in exact_report.scores
        if s.status == "ok"
    }
    kind = {s.variant_id: s.kind for s in specs}
    rows = []
    for curvature in CURVATURES:
        report = screen_knockouts(
            model, knockouts, x_train, x_val, y_val, F.cross_entropy, correct,
            curvature=curvature,
        )  # fmt: skip
        est = {e.variant_id: e.delta_loss for e in report.estimates if e.status == "ok"}
        ids = sorted(v for v in exact if v in est)
        true_order = sorted(ids, key=lambda v: -exact[v])
        screen_order = sorted(ids, key=lambda v: -est[v])
        top = set(true_order[:10])
        found = [len(top & set(screen_order[:k])) for k in (10, 20, 30)]
        rho = spearman([est[v] for v in ids], [exact[v] for v in ids])
        per_kind = []
        for k in KINDS:
            mine = [v for v in ids if kind[v] == k]
            r = spearman([est[v] for v in mine], [exact[v] for v in mine])
            per_kind.append("–" if r is None else f"{r:+.2f} ({len(mine)})")
        misses = sorted(top, key=lambda v: -screen_order.index(v))[:3]
        miss = ", ".join(
            f"{v} (exact #{true_order.index(v) + 1}, screen #{screen_order.index(v) + 1})"
            for v in misses
        )
        label = "first order" if curvature == "none" else "first order + GGN"
        rows.append(
            f"| {name} | {label} | {len(ids)} | {rho:+.3f} | {found[0]}/10 | {found[1]}/10 | "
            f"{found[2]}/10 | {' | '.join(per_kind)} | {miss} |"
        )
    return rows


def speed(model, knockouts, data, repeat: int) -> list[str]:
    x_train, _, x_val, y_val = data
    args = (x_train, x_val, y_val, F.cross_entropy, correct)
    timed = {}
    for curvature in CURVATURES:
        timed[f"screen, {curvature}"] = best(
            lambda: screen_knockouts(model, knockouts, *args, curvature=curvature),
            repeat,
        )[0]
    timed["exact fast path"] = best(
        lambda: run_knockouts(model, knockouts, *args), repeat
    )[0]

    def naive():
        means = activation_means(model, knockouts, x_train)
        return evaluate_naive(
            model, knockouts, means, x_val, y_val, F.cross_entropy, correct
        )

    timed["naive loop"] = best(naive, max(1, repeat - 1))[0]
    naive_s, fast_s = timed["naive loop"], timed["exact fast path"]
    return [
        f"| {what} | {s:.3f} | {naive_s / s:.1f}x | {fast_s / s:.1f}x |"
        for what, s in timed.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = digits()
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {len(data[2])} validation samples\n"
    )
    print("| model | screen | components | Spearman rho | exact top 10 in screen top 10 | "
          "top 20 | top 30 | rho: layers | blocks | activations | neurons | largest misses |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    resnet = None
    for name in MODELS:
        if not (EXAMPLES / f"{name}.py").is_file():
            continue
        try:
            model, specs, knockouts = trained(name, args.epochs, data)
        except Exception as exc:  # a model that does not take the digits: say so
            print(f"| {name} | not measured: {type(exc).__name__}: {str(exc)[:80]} |")
            continue
        print("\n".join(accuracy(name, model, specs, knockouts, data)))
        if name == "resnet_small":
            resnet = (model, knockouts)
    if resnet is not None:
        print(f"\nresnet_small, {len(resnet[1])} components, best of {args.repeat}:\n")
        print("| path | seconds | vs naive loop | vs exact fast path |")
        print("|---|---:|---:|---:|")
        print("\n".join(speed(*resnet, data, args.repeat)))


if __name__ == "__main__":
    main()
