"""Head to head: ablagen's measured importance against Torch-Pruning's criteria.

    python benchmarks/bench_prune.py [--study DIR] [--seeds 0,1,2] [--ratios 0.3,0.5,0.7]
                                     [--epochs 3] [--finetune-epochs 2]

On ``examples/resnet_small.py`` (digits): a knockout study over every output channel
(built in ``--study`` unless it is already ranked there), then per seed the baseline
trained exactly as the pruned scripts train it, and for every criterion and ratio the
same Torch-Pruning groups pruned (ablagen's measured importance, mean over the study's
seeds, and ``ablagen-seed``: the knockouts of that seed's own model; Torch-Pruning's L1,
L2, Taylor and random, restricted to the groups ablagen ranked), the plan applied with
the scripts' own plain-torch surgery, evaluated, fine-tuned for the same budget and
evaluated again. Prints a Markdown table: validation accuracy right after pruning and
after fine-tuning (mean over seeds), and for each criterion the paired difference
against ablagen's with its 95 % t-interval. Writes the figures as JSON (--out).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
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
    unit_scores,
)
from ablagen.prune.plan import make_plan
from ablagen.rank.ranking import load_ranking
from ablagen.core.studydir import load_manifest
from ablagen.sweep.stats import t_interval

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "resnet_small.py"
ORDER = ("ablagen", "ablagen-seed", "l1", "l2", "taylor", "random")


def ablagen(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "ablagen", *args], check=True)


def ranked_study(study: Path, epochs: int, seeds: str) -> None:
    if (study / "importance.json").is_file():
        return
    ablagen("generate", str(MODEL), "--out", str(study), "--mode", "knockout",
            "--kinds", "neurons", "--epochs", str(epochs), "--force")  # fmt: skip
    ablagen("run", str(study), "--seeds", seeds, "-j", "1", "--quiet")
    ablagen("rank", str(study), "--no-plots")


def script_module(path: Path):
    spec = importlib.util.spec_from_file_location("pruned_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="/tmp/bench_prune_study")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ratios", default="0.3,0.5,0.7")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the figures here as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    ratios = [float(r) for r in args.ratios.split(",")]
    study = Path(args.study)
    ranked_study(study, args.epochs, args.seeds)
    ablagen("prune", str(study), "--ratios", "0.5", "--no-run")
    s = script_module(study / "prune" / "pruned_0.5.py")  # its helpers: one code path
    scores = unit_scores(load_ranking(study), load_manifest(study))

    ranking, manifest = load_ranking(study), load_manifest(study)

    def measured(graph, names):
        return MeasuredImportance(scores, names, graph.is_out_channel_pruning_fn)

    def criterion(name, seed):
        if name == "ablagen":
            return measured
        if name == "ablagen-seed":  # the knockouts of this very model
            own = unit_scores(ranking, manifest, seed)
            return lambda graph, names: MeasuredImportance(
                own, names, graph.is_out_channel_pruning_fn
            )
        return lambda graph, names: SameGroups(CRITERIA[name](), measured(graph, names))

    figures: dict = {}  # (criterion, ratio) -> {"pruned": [...], "finetuned": [...]}
    sizes: dict = {}
    started = time.perf_counter()
    for seed in seeds:
        checkpoint = study / "prune" / f"bench_baseline_seed{seed}.pt"
        argv = ["--seed", str(seed), "--epochs", str(args.epochs)]
        argv += ["--finetune-epochs", str(args.finetune_epochs)]
        run = s.parse_args(argv + ["--checkpoint", str(checkpoint)])
        s.seed_everything(seed)
        result, model = s.trained_baseline(run)
        model.eval()
        x_train, y_train, x_val, y_val = s.load_data()
        baseline_acc = s.evaluate(model, x_val, y_val, run.batch_size)[1]
        figures.setdefault("baseline", []).append(baseline_acc)

        def taylor_grads(m):
            m.zero_grad()
            s.loss_fn(m(x_train[:512]), y_train[:512]).backward()

        for name in ORDER:
            for ratio in ratios:
                before = taylor_grads if name == "taylor" else None
                torch.manual_seed(seed)  # the random criterion's draw
                plan = make_plan(model, x_val[:2], criterion(name, seed), ratio, before)
                pruned = s.apply_plan(copy.deepcopy(model), plan.layers)
                s.recalibrate_norms(pruned, x_train, run.batch_size)
                acc = s.evaluate(pruned, x_val, y_val, run.batch_size)[1]
                torch.manual_seed(seed)
                history = s.finetune(pruned, run, x_train, y_train, x_val, y_val)
                row = figures.setdefault(
                    f"{name}@{ratio:g}", {"pruned": [], "finetuned": []}
                )
                row["pruned"].append(acc)
                row["finetuned"].append(history[-1]["val_acc"] if history else acc)
                if name == "ablagen" and seed == seeds[0]:
                    sizes[ratio] = s.measure(pruned, x_val, "cpu")
        sizes.setdefault("baseline", s.measure(model, x_val, "cpu"))
        print(
            f"seed {seed} done ({time.perf_counter() - started:.0f}s)", file=sys.stderr
        )

    print(f"\nresnet_small on digits, {len(seeds)} seeds, baseline {args.epochs} epochs, "
          f"fine-tuning {args.finetune_epochs} epochs; baseline val_acc "
          f"{np.mean(figures['baseline']):.4f}\n")  # fmt: skip
    print("| ratio | params | MACs | ms b1 | ms b64 |")
    print("|---|---:|---:|---:|---:|")
    for key in ["baseline", *ratios]:
        z = sizes[key]
        print(f"| {key} | {z['params']} | {z['macs']} | {z['latency_ms_b1']:.2f} | {z['latency_ms_b64']:.2f} |")  # fmt: skip
    for stage in ("pruned", "finetuned"):
        print(f"\nval_acc {'right after pruning' if stage == 'pruned' else 'after fine-tuning'}"
              " (mean; criterion minus ablagen, paired 95 % CI):\n")  # fmt: skip
        print("| criterion | " + " | ".join(f"ratio {r:g}" for r in ratios) + " |")
        print("|---|" + "---|" * len(ratios))
        for name in ORDER:
            cells = []
            for ratio in ratios:
                values = np.array(figures[f"{name}@{ratio:g}"][stage])
                mine = np.array(figures[f"ablagen@{ratio:g}"][stage])
                cell = f"{values.mean():.4f}"
                if name != "ablagen":
                    d = t_interval(values - mine)
                    ci = "" if d.low is None else f" [{d.low:+.4f}, {d.high:+.4f}]"
                    cell += f" ({d.value:+.4f}{ci})"
                cells.append(cell)
            print(f"| {name} | " + " | ".join(cells) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps({"figures": figures, "sizes": {str(k): v for k, v in sizes.items()}}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
