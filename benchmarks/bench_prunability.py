"""Noise for prunability: does importance-guided noise make a model lose less when pruned?

    python benchmarks/bench_prunability.py [--study DIR] [--rank-seeds 0,1,2]
                                           [--seeds 3,4,...,12] [--epochs 8] [--sigma 0.01]
                                           [--ratios 0.3,0.5] [--finetune-epochs 1] [--out F]

On ``examples/digits_cnn.py`` (scikit-learn's digits): a knockout study of every output
unit group (``--kinds neurons``, ranked over ``--rank-seeds``; built in ``--study``
unless it is ranked there already), then ``ablagen hybrid`` renders the arms from its
ranking and noise scales. Per seed of ``--seeds`` (disjoint from the ranking's, so no
arm trains the very models the ranking measured) four arms train from scratch with the
study's own scripts: plain (``baseline.py``), uniform (``perturbed.py``: the same
sigma on every parameter), hybrid (``hybrid.py``: importance-guided scales) and
shuffled (``shuffled.py``: the same scales permuted among components, one permutation,
the study's) and reshuffled (``shuffled.py`` with its ``NOISE_SCALES`` replaced by a new
permutation per training seed, ``shuffled_noise_scales(..., seed=SEED)``: no single
permutation decides the control), the noisy four at the same total noise energy. Each trained model is then pruned by the study's
ranking: Torch-Pruning's groups with ablagen's measured importance (the bottom
``--ratios`` of every group's channels, the output layer whole; the same channels for
every arm), the plan applied with the pruned script's plain-torch surgery, evaluated
(no fine-tuning), then fine-tuned ``--finetune-epochs`` without noise and evaluated
again. Prints Markdown tables: per arm and ratio the validation accuracy before and
after pruning and the drop, each arm's drop minus plain's paired by seed with its
95 % t-interval and paired t-test, and hybrid against shuffled and uniform.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bench_prune import script_data  # the scripts' data, as their train() gets it
import torch

from ablagen.arms.hybrid import arm_scales
from ablagen.arms.noise_scales import load_noise_scales, shuffled_noise_scales
from ablagen.core.studydir import load_manifest
from ablagen.prune.importance import MeasuredImportance, unit_scores
from ablagen.prune.plan import make_plan
from ablagen.rank.ranking import load_ranking
from ablagen.sweep.stats import paired_t, t_interval

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "digits_cnn.py"
ARMS = {  # arm -> the study's script that trains it
    "plain": "baseline.py",
    "uniform": "perturbed.py",
    "hybrid": "hybrid.py",
    "shuffled": "shuffled.py",
    "reshuffled": "shuffled.py",  # its NOISE_SCALES replaced: a permutation per seed
}
STAGES = {"pruned": "right after pruning", "finetuned": "after fine-tuning"}


def ablagen(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "ablagen", *args], check=True)


def ranked_study(study: Path, epochs: int, seeds: str, sigma: float) -> None:
    """The knockout study of every unit group, ranked, with its arm scripts."""
    if not (study / "importance.json").is_file():
        ablagen("generate", str(MODEL), "--out", str(study), "--mode", "knockout",
                "--kinds", "neurons", "--epochs", str(epochs), "--force")  # fmt: skip
        ablagen("run", str(study), "--seeds", seeds, "-j", "1", "--quiet")
        ablagen("rank", str(study), "--no-plots")
    ablagen("hybrid", str(study), "--sigma", format(sigma, "g"), "--ablate-bottom", "0")
    ablagen("prune", str(study), "--ratios", "0.5", "--no-run")


def script_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def quiet(call, *args):
    """``call(*args)`` with the scripts' per-epoch lines swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        return call(*args)


def cell(values: np.ndarray) -> str:
    ci = t_interval(values)
    return f"{ci.value:.4f}" + (
        "" if ci.low is None else f" [{ci.low:+.4f}, {ci.high:+.4f}]"
    )


def versus(arm: np.ndarray, other: np.ndarray) -> str:
    c = paired_t(arm, other)
    ci = "" if c.diff.low is None else f" [{c.diff.low:+.4f}, {c.diff.high:+.4f}]"
    p = "" if c.p_value is None else f", p {c.p_value:.2f}"
    return f"{c.diff.value:+.4f}{ci}{p}"


def tables(acc: dict, ratios: list[float]) -> None:
    """Print the Markdown tables of ``acc``: (arm, stage, ratio) -> val_acc per seed."""

    def a(arm, stage, ratio=0.0):
        return np.array(acc[(arm, stage, ratio)])

    print("val_acc (mean [95 % t-interval]) before pruning:\n")
    print("| arm | val acc | minus plain (paired) |")
    print("|---|---:|---:|")
    for arm in ARMS:
        other = (
            "" if arm == "plain" else versus(a(arm, "trained"), a("plain", "trained"))
        )
        print(f"| {arm} | {cell(a(arm, 'trained'))} | {other} |")
    for stage, words in STAGES.items():
        print(f"\naccuracy drop {words} (trained minus pruned val_acc; mean [95 % "
              "t-interval]; minus plain's drop, paired by seed [95 % t-interval], "
              "paired t-test p):\n")  # fmt: skip
        print(
            "| arm | " + " | ".join(f"drop at {r:g} | vs plain" for r in ratios) + " |"
        )
        print("|---|" + "---:|---:|" * len(ratios))
        for arm in ARMS:
            cells = []
            for ratio in ratios:
                drop = a(arm, "trained") - a(arm, stage, ratio)
                plain = a("plain", "trained") - a("plain", stage, ratio)
                cells += [cell(drop), "" if arm == "plain" else versus(drop, plain)]
            print(f"| {arm} | " + " | ".join(cells) + " |")
        print(
            f"\nhybrid against the controls {words} (hybrid minus control, paired):\n"
        )
        print("| control | " + " | ".join(f"drop at {r:g} | pruned acc at {r:g}" for r in ratios) + " |")  # fmt: skip
        print("|---|" + "---:|---:|" * len(ratios))
        for other in ("shuffled", "reshuffled", "uniform", "plain"):
            cells = []
            for ratio in ratios:
                mine = a("hybrid", "trained") - a("hybrid", stage, ratio)
                theirs = a(other, "trained") - a(other, stage, ratio)
                cells += [
                    versus(mine, theirs),
                    versus(a("hybrid", stage, ratio), a(other, stage, ratio)),
                ]
            print(f"| {other} | " + " | ".join(cells) + " |")


def merged(paths: list[str]) -> tuple[dict, list[float], list[int]]:
    """The figures of several ``--out`` files, seed lists concatenated (the same
    ranked study, disjoint seeds: one paired sample)."""
    acc: dict = {}
    seeds: list[int] = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        seeds += data["seeds"]
        for key, values in data["accuracy"].items():
            arm, rest = key.split("/")
            stage, ratio = rest.split("@")
            acc.setdefault((arm, stage, float(ratio)), []).extend(values)
    ratios = sorted({r for (_, stage, r) in acc if stage != "trained"})
    return acc, ratios, seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="/tmp/bench_prunability_study")
    parser.add_argument("--rank-seeds", default="0,1,2")
    parser.add_argument("--seeds", default="3,4,5,6,7,8,9,10,11,12")
    parser.add_argument("--epochs", type=int, default=8)  # the study's default
    parser.add_argument("--sigma", type=float, default=0.01)
    parser.add_argument("--ratios", default="0.3,0.5")
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the figures here as JSON")
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="only print the tables of --out files",
    )
    args = parser.parse_args()
    if args.merge:
        acc, ratios, seeds = merged(args.merge)
        print(
            f"{len(seeds)} seeds ({','.join(map(str, seeds))}) from {len(args.merge)} runs\n"
        )
        tables(acc, ratios)
        return
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    ratios = [float(r) for r in args.ratios.split(",")]
    study = Path(args.study)
    started = time.perf_counter()
    ranked_study(study, args.epochs, args.rank_seeds, args.sigma)
    prep = time.perf_counter() - started
    s = script_module(study / "prune" / "pruned_0.5.py", "pruned")  # its helpers
    arms = {a: script_module(study / f, f"arm_{a}") for a, f in ARMS.items()}
    ranking, manifest, noise = (
        load_ranking(study),
        load_manifest(study),
        load_noise_scales(study),
    )
    scores = unit_scores(ranking, manifest)
    reshuffled = {
        seed: arm_scales(shuffled_noise_scales(manifest, ranking, noise, seed), manifest.model["parameters"])
        for seed in seeds
    }  # fmt: skip
    x_train, y_train, x_val, y_val = script_data(s)
    plans: dict[float, dict] = {}
    acc: dict = {}  # (arm, stage, ratio) -> per seed; (arm, "trained", 0) too
    for seed in seeds:
        for arm, module in arms.items():
            checkpoint = study / "prune" / f"bench_{arm}_seed{seed}.pt"
            argv = ["--seed", str(seed), "--epochs", str(args.epochs)]
            if arm == "reshuffled":
                module.NOISE_SCALES = reshuffled[seed]
            code = quiet(module.main, [*argv, "--checkpoint", str(checkpoint)])
            assert code == 0, f"{arm} seed {seed} exited {code}"
            model = s.load_checkpoint(checkpoint, "cpu").eval()
            before = s.evaluate(model, x_val, y_val, 64)[1]
            acc.setdefault((arm, "trained", 0.0), []).append(before)
            for ratio in ratios:
                if ratio not in plans:  # the ranking's plan: the same for every arm
                    plans[ratio] = make_plan(
                        model, x_val[:2],
                        lambda graph, names: MeasuredImportance(scores, names, graph.is_out_channel_pruning_fn),
                        ratio,
                    ).layers  # fmt: skip
                pruned = s.apply_plan(copy.deepcopy(model), plans[ratio])
                s.recalibrate_norms(pruned, x_train, 64)
                acc.setdefault((arm, "pruned", ratio), []).append(
                    s.evaluate(pruned, x_val, y_val, 64)[1]
                )
                run = s.parse_args(
                    argv + ["--finetune-epochs", str(args.finetune_epochs)]
                )
                torch.manual_seed(seed)
                history = quiet(s.finetune, pruned, run, x_train, y_train, x_val, y_val)
                acc.setdefault((arm, "finetuned", ratio), []).append(
                    history[-1]["val_acc"]
                    if history
                    else acc[(arm, "pruned", ratio)][-1]
                )
        print(
            f"seed {seed} done ({time.perf_counter() - started:.0f}s)", file=sys.stderr
        )
    total = time.perf_counter() - started

    kept = {
        r: {n: len(k["out"]) for n, k in p.items() if "out" in k}
        for r, p in plans.items()
    }
    print(f"\ndigits_cnn, {len(seeds)} seeds ({args.seeds}), {args.epochs} epochs, "
          f"sigma {args.sigma:g}, ranking from seeds {args.rank_seeds}; fine-tuning "
          f"{args.finetune_epochs} epoch(s); kept output channels {kept}; "
          f"{total:.0f} s in all ({prep:.0f} s for the ranked study)\n")  # fmt: skip
    tables(acc, ratios)
    if args.out:
        figures = {
            f"{arm}/{stage}@{ratio:g}": v for (arm, stage, ratio), v in acc.items()
        }
        Path(args.out).write_text(json.dumps({"seeds": seeds, "accuracy": figures}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
