"""The screen against exact knockout: accuracy per model and kind, and speed, in one run.

For each model the model is trained briefly from a seeded start (Adam, lr 3e-3):
examples/digits_cnn.py and examples/resnet_small.py on the digits split the
generated scripts use, examples/tiny_gpt.py (attention) on its own copy task
(``build_data()``: random token sequences, the label the token at position KEY).
Every layer, block, activation and neuron group (and, for the GPT, every attention
head) is knocked out exactly (``run_knockouts``) and estimated by the screen: first
order only; with the Gauss-Newton term along the gradient (rank 1, no pass of its
own); of rank 2 on every sample; and of rank 2 on the first half of the samples,
rank 1 on the rest (the default, ``GGN_SHARE``), and the same of rank 3.
Reported: Spearman rho of the estimated and the exact val_loss change, the exact
top 10 found in the screen's top 10 / 20 / 30, rho per component kind, and the
largest misses.

Speed (resnet_small, 214 components; tiny_gpt): the screen, the exact fast path and
the naive loop (a fresh copy per knockout), best of --repeat, side by side in this
process, in wall-clock seconds and in this process's CPU seconds (on a busy shared
machine the CPU time is the steadier of the two; with one thread they agree when
the machine is quiet).

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

from ablagen.analyze import analyze  # noqa: E402
from ablagen.generate.knockout_mode import knockouts_for  # noqa: E402
from ablagen.generate.variants import ablation_spec, plan_variants  # noqa: E402
from ablagen.core.errors import ComponentError  # noqa: E402
from ablagen.knockout_engine import (  # noqa: E402
    Validation,
    evaluate_naive,
    run_knockouts,
)
from ablagen.knockout_engine.means import activation_means  # noqa: E402
from ablagen.analyze.loading import load_model  # noqa: E402
from ablagen.study.pipeline import spearman  # noqa: E402
from ablagen.screen import GGN_RANK, GGN_SHARE, screen_knockouts  # noqa: E402

EXAMPLES = HERE.parent / "examples"
MODELS = ("digits_cnn", "resnet_small", "tiny_gpt")
KINDS = ("layer", "block", "activation", "neuron", "head")
#: the screens compared: (label, curvature, Gauss-Newton rank, share of the samples
#: with the directions beyond the gradient)
SCREENS = (
    ("first order", "none", 1, 1.0),
    ("+ GGN rank 1 (along the gradient)", "ggn", 1, 1.0),
    (f"+ GGN rank {GGN_RANK}, every sample", "ggn", GGN_RANK, 1.0),
    (f"+ GGN rank {GGN_RANK}, share {GGN_SHARE:g} (default)", "ggn", GGN_RANK, GGN_SHARE),
    (f"+ GGN rank 3, share {GGN_SHARE:g}", "ggn", 3, GGN_SHARE),
)  # fmt: skip


def model_data(name: str):
    """The model's own data: the example's ``build_data()`` if it has one, else digits."""
    loaded = load_model(str(EXAMPLES / f"{name}.py"))
    build = getattr(sys.modules.get(type(loaded.model).__module__), "build_data", None)
    return build() if build is not None else digits()


def trained(name: str, epochs: int, data):
    torch.manual_seed(0)  # the initial weights too: the same model in every run
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
    try:  # heads where the model has attention ablagen recognises
        planned = plan_variants(inventory, KINDS)
    except ComponentError:
        planned = plan_variants(inventory, KINDS[:-1])
    specs = [ablation_spec(c, m) for c, m in planned]
    return model.eval(), specs, knockouts_for(inventory, specs)


def best(fn, repeat: int) -> tuple[float, float]:
    """The least wall-clock and the least CPU seconds of ``repeat`` calls."""
    wall, cpu = [], []
    for _ in range(repeat):
        started, used = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - used)
    return min(wall), min(cpu)


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
    for label, curvature, rank, share in SCREENS:
        report = screen_knockouts(
            model, knockouts, x_train, x_val, y_val, F.cross_entropy, correct,
            curvature=curvature, ggn_rank=rank, ggn_share=share,
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
        rows.append(
            f"| {name} | {label} | {len(ids)} | {rho:+.3f} | {found[0]}/10 | {found[1]}/10 | "
            f"{found[2]}/10 | {' | '.join(per_kind)} | {miss} |"
        )
    return rows


def speed(name, model, knockouts, data, repeat: int) -> list[str]:
    x_train, _, x_val, y_val = data
    args = (x_train, x_val, y_val, F.cross_entropy, correct)
    timed = {}
    for label, curvature, rank, share in SCREENS:
        timed[f"screen, {label}"] = best(
            lambda: screen_knockouts(
                model, knockouts, *args, curvature=curvature, ggn_rank=rank,
                ggn_share=share,
            ),
            repeat,
        )  # fmt: skip
    timed["exact fast path"] = best(
        lambda: run_knockouts(model, knockouts, *args), repeat
    )

    def naive():
        means = activation_means(model, knockouts, x_train)
        val = Validation(x_val, y_val, F.cross_entropy, correct)
        return evaluate_naive(model, knockouts, means, val)

    timed["naive loop"] = best(naive, max(1, repeat - 1))
    naive_t, fast_t = timed["naive loop"], timed["exact fast path"]
    return [
        f"| {name} | {what} | {w:.3f} | {naive_t[0] / w:.1f}x | {fast_t[0] / w:.1f}x "
        f"| {c:.3f} | {naive_t[1] / c:.1f}x | {fast_t[1] / c:.1f}x |"
        for what, (w, c) in timed.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)\n")
    print("| model | screen | components | Spearman rho | exact top 10 in screen top 10 | "
          "top 20 | top 30 | rho: layers | blocks | activations | neurons | heads | largest misses |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    timed = []
    for name in MODELS:
        if not (EXAMPLES / f"{name}.py").is_file():
            continue
        try:
            data = model_data(name)
            model, specs, knockouts = trained(name, args.epochs, data)
        except Exception as exc:  # a model that does not train here: say so
            print(f"| {name} | not measured: {type(exc).__name__}: {str(exc)[:80]} |")
            continue
        print("\n".join(accuracy(name, model, specs, knockouts, data)), flush=True)
        if name != "digits_cnn":
            timed.append((name, model, knockouts, data))
    print(
        f"\nspeed, best of {args.repeat}; ratios: the naive loop's or the fast "
        "path's time over this path's\n"
    )
    print(
        "| model | path | wall s | vs naive | vs fast path | CPU s | vs naive | vs fast path |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, model, knockouts, data in timed:
        print(
            f"| {name} | {len(knockouts)} components, {len(data[2])} validation samples | | | | | | |"
        )
        print("\n".join(speed(name, model, knockouts, data, args.repeat)), flush=True)


if __name__ == "__main__":
    main()
