"""Head to head: ablagen's measured importance against Torch-Pruning's criteria.

    python benchmarks/bench_prune.py [--model resnet_small|hf_bert_tiny] [--study DIR]
        [--seeds 0,1,2] [--ratios 0.3,0.5,0.7] [--epochs 3] [--finetune-epochs 2]

Models: ``examples/resnet_small.py`` (digits; every output channel) and
``examples/hf_bert_tiny.py`` (a 2-layer BERT, 4 heads a layer, on a token task; its
attention heads and MLP neurons). Two studies are built in ``--study`` unless they
are already ranked there: a knockout study (``DIR/knockout``) and a screen study
(``DIR/screen``, gradient estimates), both over the same seeds. Then per seed the
baseline is trained exactly as the pruned scripts train it, and for every criterion
and ratio the same Torch-Pruning groups are pruned: ablagen's measured importance
(``ablagen``: the knockouts, mean over the study's seeds; ``ablagen-seed``: the
knockouts of that seed's own model; ``screen``: the screen's estimates, mean over
seeds) and Torch-Pruning's L1, L2, Taylor, Hessian (OBD) and random, restricted to
the groups ablagen ranked. The plan is applied with the scripts' own plain-torch
surgery, evaluated, fine-tuned for the same budget and evaluated again. Prints
Markdown tables: validation accuracy and loss right after pruning and after
fine-tuning (mean over seeds), and for each criterion the paired difference against
ablagen's with its 95 % t-interval. Writes the figures as JSON (--out).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ablagen.prune.importance import (
    CRITERIA,
    MeasuredImportance,
    SameGroups,
    attention_heads,
    unit_scores,
)
from ablagen.prune.plan import make_plan
from ablagen.rank.ranking import load_ranking
from ablagen.core.studydir import load_manifest
from ablagen.sweep.stats import t_interval

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # model file, kinds its studies rank, the metric they rank on, which ids
    "resnet_small": (ROOT / "examples" / "resnet_small.py", "neurons", "val_acc", None),
    # the heads and the MLP's hidden neurons (72 components, not the 426 of every
    # Linear: the rest is the residual stream, kept whole, or scored by the heads).
    # Its task saturates (val_acc 1.0 after 2 epochs): one unit's knockout never
    # changes the accuracy, so the studies are ranked on the validation loss.
    "hf_bert_tiny": (ROOT / "examples" / "hf_bert_tiny.py", "heads,neurons", "val_loss",
                     r"\.attention\.heads\[|\.intermediate\.dense\["),
}  # fmt: skip
ORDER = ("ablagen", "ablagen-seed", "screen", "l1", "l2", "taylor", "hessian", "random")
OBD_SAMPLES = 128  # per-sample squared gradients averaged for the Hessian criterion


def ablagen(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "ablagen", *args], check=True)


def ranked_study(study: Path, model: str, mode: str, epochs: int, seeds: str) -> None:
    if (study / "importance.json").is_file():
        return
    path, kinds, metric, select = MODELS[model]
    only = []
    if select is not None:
        listed = subprocess.run([sys.executable, "-m", "ablagen", "analyze", str(path), "--json"],
                                check=True, capture_output=True, text=True).stdout  # fmt: skip
        ids = [c["id"] for c in json.loads(listed)["components"] if re.search(select, c["id"])]  # fmt: skip
        only = ["--components", ",".join(ids)]
    ablagen("generate", str(path), "--out", str(study), "--mode", mode,
            "--kinds", kinds, "--epochs", str(epochs), "--force", *only)  # fmt: skip
    ablagen("run", str(study), "--seeds", seeds, "-j", "1", "--quiet")
    metric = (
        "val_loss" if mode == "screen" else metric
    )  # a screen estimates no accuracy
    ablagen("rank", str(study), "--no-plots", "--metric", metric)


def script_module(path: Path):
    spec = importlib.util.spec_from_file_location("pruned_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script_data(s) -> tuple:
    """(x_train, y_train, x_val, y_val) as the script's train() gets them: its
    load_data(), or the model file's build_data() it calls directly."""
    if hasattr(s, "load_data"):
        return s.load_data()
    return tuple(s.torch.as_tensor(t) for t in s.build_data())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="resnet_small")
    parser.add_argument(
        "--study", default=None, help="[default: /tmp/bench_prune_MODEL]"
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ratios", default="0.3,0.5,0.7")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--criteria", default=",".join(ORDER), help="a subset of: " + ",".join(ORDER))  # fmt: skip
    parser.add_argument("--out", default=None, help="write the figures here as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    ratios = [float(r) for r in args.ratios.split(",")]
    order = [c for c in ORDER if c in args.criteria.split(",")]
    root = Path(args.study or f"/tmp/bench_prune_{args.model}")
    study, screen = root / "knockout", root / "screen"
    ranked_study(study, args.model, "knockout", args.epochs, args.seeds)
    if "screen" in order:
        ranked_study(screen, args.model, "screen", args.epochs, args.seeds)
    ablagen("prune", str(study), "--ratios", "0.5", "--no-run")
    s = script_module(study / "prune" / "pruned_0.5.py")  # its helpers: one code path
    ranking, manifest = load_ranking(study), load_manifest(study)
    scores = unit_scores(ranking, manifest)
    heads = attention_heads(manifest)

    def measured_by(table):
        return lambda graph, names: MeasuredImportance(
            table, names, graph.is_out_channel_pruning_fn
        )

    measured = measured_by(scores)
    screened = (
        measured_by(unit_scores(load_ranking(screen), load_manifest(screen)))
        if "screen" in order
        else None
    )

    def criterion(name, seed):
        if name == "ablagen":
            return measured
        if name == "ablagen-seed":  # the knockouts of this very model
            return measured_by(unit_scores(ranking, manifest, seed))
        if name == "screen":
            return screened
        return lambda graph, names: SameGroups(CRITERIA[name](), measured(graph, names))

    figures: dict = {}  # (criterion, ratio) -> {"pruned": [...], "finetuned": [...]}
    sizes: dict = {}
    started = time.perf_counter()
    for seed in seeds:
        checkpoint = root / f"bench_baseline_seed{seed}.pt"
        argv = ["--seed", str(seed), "--epochs", str(args.epochs)]
        argv += ["--finetune-epochs", str(args.finetune_epochs)]
        run = s.parse_args(argv + ["--checkpoint", str(checkpoint)])
        s.random.seed(seed)  # as the script's main() seeds
        s.torch.manual_seed(seed)
        result, model = s.trained_baseline(run)
        model.eval()
        x_train, y_train, x_val, y_val = script_data(s)
        baseline = s.evaluate(model, x_val, y_val, run.batch_size)
        figures.setdefault("baseline", []).append(baseline[1])
        figures.setdefault("baseline_loss", []).append(baseline[0])

        def taylor_grads(m):
            m.zero_grad()
            s.loss_fn(m(x_train[:512]), y_train[:512]).backward()

        def obd_grads(m):
            """Squared per-sample gradients, averaged, left in .grad (the diagonal
            Fisher that GroupHessianImportance reads; its own accumulate_grad in
            Torch-Pruning 1.6.0 keeps only the last sample's)."""
            squares = {p: torch.zeros_like(p) for p in m.parameters()}
            for i in range(OBD_SAMPLES):
                m.zero_grad()
                s.loss_fn(m(x_train[i : i + 1]), y_train[i : i + 1]).backward()
                for p in m.parameters():
                    if p.grad is not None:
                        squares[p] += p.grad.pow(2)
            for p in m.parameters():
                p.grad = squares[p] / OBD_SAMPLES

        fill = {"taylor": taylor_grads, "hessian": obd_grads}
        for name in order:
            for ratio in ratios:
                torch.manual_seed(seed)  # the random criterion's draw
                plan = make_plan(model, x_val[:2], criterion(name, seed), ratio,
                                 fill.get(name), heads=heads)  # fmt: skip
                pruned = s.apply_plan(copy.deepcopy(model), plan.layers)
                s.recalibrate_norms(pruned, x_train, run.batch_size)
                loss, acc = s.evaluate(pruned, x_val, y_val, run.batch_size)
                torch.manual_seed(seed)
                history = s.finetune(pruned, run, x_train, y_train, x_val, y_val)
                row = figures.setdefault(f"{name}@{ratio:g}", {})
                final = history[-1] if history else {"val_acc": acc, "val_loss": loss}
                for key, value in (("pruned", acc), ("pruned_loss", loss),
                                   ("finetuned", final["val_acc"]),
                                   ("finetuned_loss", final["val_loss"])):  # fmt: skip
                    row.setdefault(key, []).append(value)
                if name == order[0] and seed == seeds[0]:
                    sizes[ratio] = s.measure(pruned, x_val, "cpu")
        sizes.setdefault("baseline", s.measure(model, x_val, "cpu"))
        print(
            f"seed {seed} done ({time.perf_counter() - started:.0f}s)", file=sys.stderr
        )

    print(f"\n{args.model}, {len(seeds)} seeds, baseline {args.epochs} epochs, "
          f"fine-tuning {args.finetune_epochs} epochs; baseline val_acc "
          f"{np.mean(figures['baseline']):.4f}, val_loss "
          f"{np.mean(figures['baseline_loss']):.4f}; "
          f"{time.perf_counter() - started:.0f} s\n")  # fmt: skip
    print("| ratio | params | MACs | ms b1 | ms b64 |")
    print("|---|---:|---:|---:|---:|")
    for key in ["baseline", *ratios]:
        z = sizes[key]
        print(f"| {key} | {z['params']} | {z['macs']} | {z['latency_ms_b1']:.2f} | {z['latency_ms_b64']:.2f} |")  # fmt: skip
    stages = {
        "pruned": "val_acc right after pruning",
        "finetuned": "val_acc after fine-tuning",
        "pruned_loss": "val_loss right after pruning",
        "finetuned_loss": "val_loss after fine-tuning",
    }
    for stage, title in stages.items():
        print(f"\n{title} (mean; criterion minus ablagen, paired 95 % CI):\n")
        print("| criterion | " + " | ".join(f"ratio {r:g}" for r in ratios) + " |")
        print("|---|" + "---|" * len(ratios))
        for name in order:
            cells = []
            for ratio in ratios:
                values = np.array(figures[f"{name}@{ratio:g}"][stage])
                mine = np.array(figures[f"{order[0]}@{ratio:g}"][stage])
                cell = f"{values.mean():.4f}"
                if name != order[0]:
                    d = t_interval(values - mine)
                    ci = "" if d.low is None else f" [{d.low:+.4f}, {d.high:+.4f}]"
                    cell += f" ({d.value:+.4f}{ci})"
                cells.append(cell)
            print(f"| {name} | " + " | ".join(cells) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps({"figures": figures, "sizes": {str(k): v for k, v in sizes.items()}}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
