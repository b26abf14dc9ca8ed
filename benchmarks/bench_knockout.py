"""Knockout evaluation: the fast path against a fresh model copy per ablation, and against
one generated training script per ablation.

Every layer, block, activation (module and functional) and every output channel of
examples/resnet_small.py (width 16: 214 components, each with its default method) is
knocked out on the digits validation set (359 samples), the model briefly trained first:

(a) fast path: ``run_knockouts`` (cache, recompute downstream only, stacked copies);
(b) naive in-process loop: a fresh deep copy with a hook (or an edited graph) per
    ablation, the validation set through it in batches of 64;
(c) retrain study: one generated script per ablation, run by the orchestrator
    (``ablagen run --jobs 2``; a sample of them, the rest extrapolated), and, for
    scale, the generated knockout.py run with ``python``.

(a) and (b) each run in a child process, so each peak RSS is its own; their results must
agree within 1e-5. Prints a markdown table.

    python benchmarks/bench_knockout.py [--threads 1] [--scripts 16] [--epochs 1] [--repeat 2]

With ``--gpt``: the same comparison for a transformer, every attention head and MLP
neuron group of examples/tiny_gpt.py (benchmarks/knockout_gpt.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from ablagen.analyze import analyze  # noqa: E402
from ablagen.generate.context import TrainConfig  # noqa: E402
from ablagen.generate.knockout_mode import knockouts_for  # noqa: E402
from ablagen.generate.variants import ablation_spec, plan_variants  # noqa: E402
from ablagen.generate.build import GenerateOptions, generate_study  # noqa: E402
from ablagen.knockout_engine import (
    Validation,
    activation_means,
    evaluate_naive,
    run_knockouts,
)  # noqa: E402
from ablagen.analyze.loading import load_model  # noqa: E402

MODEL = HERE.parent / "examples" / "resnet_small.py"
KINDS = ("layer", "block", "activation", "neuron")
MIB = 2**20


def correct(output: torch.Tensor, target: torch.Tensor) -> tuple[float, int]:
    return float((output.argmax(dim=1) == target).sum()), len(target)


def digits() -> tuple[torch.Tensor, ...]:
    """The generated scripts' digits split: 20% held out with split seed 0, pixels / 16."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    val, train = order[: round(0.2 * len(x))], order[round(0.2 * len(x)) :]
    return x[train], y[train], x[val], y[val]


def prepare(path: Path, epochs: int) -> list[str]:
    """Train the model briefly; save weights and data for the children. Returns the variant ids."""
    loaded = load_model(str(MODEL))
    model, (x_train, y_train, x_val, y_val) = loaded.model, digits()
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for i in range(0, len(x_train), 64):
            loss = F.cross_entropy(model(x_train[i : i + 64]), y_train[i : i + 64])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    torch.save(
        {"state": model.state_dict(), "data": (x_train, y_train, x_val, y_val)}, path
    )
    return [s.variant_id for s in specs()[1]]


def specs():
    inventory = analyze(load_model(str(MODEL)))
    return inventory, [ablation_spec(c, m) for c, m in plan_variants(inventory, KINDS)]


def child(kind: str, saved: Path, max_batch_mb: float, repeat: int) -> dict:
    """Run one path on the saved model; its timing, memory and scores."""
    inventory, planned = specs()
    knockouts = knockouts_for(inventory, planned)
    model = load_model(str(MODEL)).model
    bundle = torch.load(saved)
    model.load_state_dict(bundle["state"])
    model.eval()
    x_train, _, x_val, y_val = bundle["data"]

    def evaluate() -> tuple:
        if kind == "fast":
            report = run_knockouts(
                model,
                knockouts,
                x_train,
                x_val,
                y_val,
                F.cross_entropy,
                correct,
                64,
                max_batch_mb,
            )
            return report.scores, report.stats
        means = activation_means(model, knockouts, x_train, 64)
        return (
            evaluate_naive(
                model,
                knockouts,
                means,
                Validation(x_val, y_val, F.cross_entropy, correct, batch_size=64),
            ),
            {},
        )

    rss_before, seconds = _rss_now(), float("inf")
    with _RssPeak() as rss:
        for _ in range(
            repeat
        ):  # the best of a few: the first also pays one-time kernel setup
            start = time.perf_counter()
            scores, stats = evaluate()
            seconds = min(seconds, time.perf_counter() - start)
    with FlopCounterMode(
        display=False
    ) as flops:  # the work done, counted apart from the timing
        evaluate()
    return {
        "seconds": seconds,
        "stats": stats,
        "rss_before": rss_before,
        "rss_peak": rss.peak,
        "flops": flops.get_total_flops(),
        "scores": {
            s.variant_id: [s.metrics.loss, s.metrics.accuracy] if s.metrics else None
            for s in scores
        },
    }


def _rss_now() -> int:
    """Resident memory now (Linux), else the process's peak so far."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf(
            "SC_PAGE_SIZE"
        )
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _RssPeak:
    """The highest resident memory seen while the block runs (sampled every 2 ms): the
    process-wide getrusage peak is already set by model loading and tracing."""

    def __init__(self) -> None:
        self.peak, self._done = _rss_now(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._done.wait(0.002):
            self.peak = max(self.peak, _rss_now())

    def __enter__(self) -> "_RssPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_now())


def run_child(
    kind: str, saved: Path, args: argparse.Namespace, max_batch_mb: float
) -> dict:
    out = saved.parent / f"{kind}-{max_batch_mb}.json"
    command = [sys.executable, __file__, "--child", kind, "--saved", str(saved), "--out", str(out),
               "--threads", str(args.threads), "--max-batch-mb", str(max_batch_mb), "--repeat", str(args.repeat)]  # fmt: skip
    subprocess.run(command, check=True, env=_env(args.threads))
    return json.loads(out.read_text())


def _env(threads: int) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "PYTHONPATH": str(HERE.parent / "src"),
    }


def scripts(
    tmp: Path, ids: list[str], count: int, epochs: int, threads: int
) -> tuple[float, float]:
    """(seconds per retrain script, run by the orchestrator: ``ablagen run --jobs 2``,
    the study's baseline included; seconds for knockout.py, run with ``python``)."""
    picked = ids[:: max(1, len(ids) // count)][:count]
    train = TrainConfig(epochs=epochs)
    generate_study(
        GenerateOptions(
            model=str(MODEL), out=tmp / "retrain", components=tuple(picked), train=train
        )
    )
    generate_study(
        GenerateOptions(
            model=str(MODEL),
            out=tmp / "knockout",
            kinds=",".join(KINDS),
            mode="knockout",
            train=train,
        )
    )
    manifest = json.loads((tmp / "retrain" / "manifest.json").read_text())
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ablagen", "run", str(tmp / "retrain"), "--jobs", "2",
                    "--epochs", str(epochs), "--quiet"], check=True, capture_output=True,
                   env=_env(threads))  # fmt: skip
    per_script = (time.perf_counter() - start) / len(manifest["variants"])
    start = time.perf_counter()
    subprocess.run([sys.executable, "knockout.py", "--epochs", str(epochs), "--out", "r.json"], cwd=tmp / "knockout",
                   check=True, capture_output=True, env=_env(threads))  # fmt: skip
    knockout_wall = time.perf_counter() - start
    result = json.loads((tmp / "knockout" / "r.json").read_text())
    assert len(result["variants"]) == len(ids) + 1 and result["knockout_path"] == "fast"
    return per_script, knockout_wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads in every process"
    )
    parser.add_argument(
        "--scripts",
        type=int,
        default=16,
        help="retrain scripts run by the orchestrator (the rest extrapolated)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=1,
        help="training epochs (the benchmark model; the scripts)",
    )
    parser.add_argument("--max-batch-mb", type=float, default=256.0)
    parser.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="time the best of this many runs of (a) and (b)",
    )
    parser.add_argument(
        "--small-mb",
        type=float,
        default=2.0,
        help="a tight budget, to show the bound holds",
    )
    parser.add_argument(
        "--gpt",
        action="store_true",
        help="instead: every head and MLP neuron group of examples/tiny_gpt.py",
    )
    parser.add_argument("--child", choices=["fast", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--saved", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.gpt:
        from knockout_gpt import run as run_gpt

        sys.exit(run_gpt(max(args.epochs, 2), max(args.repeat, 3)))
    if args.child:
        args.out.write_text(
            json.dumps(child(args.child, args.saved, args.max_batch_mb, args.repeat))
        )
        return
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "model.pt"
        ids = prepare(saved, args.epochs)
        fast = run_child("fast", saved, args, args.max_batch_mb)
        tight = run_child("fast", saved, args, args.small_mb)
        naive = run_child("naive", saved, args, args.max_batch_mb)
        per_script, knockout_wall = scripts(
            Path(tmp), ids, args.scripts, args.epochs, args.threads
        )
    report(ids, fast, tight, naive, per_script, knockout_wall, args)


def report(
    ids: list[str],
    fast: dict,
    tight: dict,
    naive: dict,
    per_script: float,
    knockout_wall: float,
    args,
) -> None:
    n, t = len(ids), fast["seconds"]
    diff = max(
        abs(a - b) for i in ids for a, b in zip(fast["scores"][i], naive["scores"][i])
    )
    tight_diff = max(
        abs(a - b) for i in ids for a, b in zip(tight["scores"][i], naive["scores"][i])
    )

    def row(label: str, seconds: float, r: dict | None, note: str = "") -> str:
        gflop = f"{r['flops'] / 1e9:.1f}" if r else "-"
        rss = (
            f"{r['rss_peak'] / MIB:.0f} (+{(r['rss_peak'] - r['rss_before']) / MIB:.0f})"
            if r
            else "-"
        )
        held = "-"
        if r and r["stats"]:
            held = f"{(r['stats']['cache_peak_bytes'] + r['stats']['stack_peak_bytes']) / MIB:.1f} of {r['stats']['budget_bytes'] / MIB:g}"
        return f"| {label} | {seconds:.2f}{note} | {1000 * seconds / n:.1f} | {seconds / t:.2f}x | {gflop} | {rss} | {held} |"

    print(
        f"{n} knockouts of examples/resnet_small.py on 359 digits validation samples; {args.threads} thread(s)\n"
    )
    print(
        "| approach | seconds | ms / ablation | vs fast path | GFLOP | RSS MiB: peak in run (+ over start) | held by engine MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(row(f"(a) fast path, --max-batch-mb {args.max_batch_mb:g}", t, fast))
    print(
        row(f"(a) fast path, --max-batch-mb {args.small_mb:g}", tight["seconds"], tight)
    )
    print(row("(b) naive: fresh copy per ablation", naive["seconds"], naive))
    label = f"(c) retrain: one script per ablation, {args.epochs} epoch, by the orchestrator with 2 jobs ({args.scripts} run, extrapolated)"
    print(row(label, per_script * n, None, " (est.)"))
    print(
        row(
            f"(c') knockout.py end to end ({args.epochs}-epoch training + all {n})",
            knockout_wall,
            None,
        )
    )
    stats, small = fast["stats"], tight["stats"]
    print(
        f"\nfast vs naive: max |difference| in val loss / accuracy {diff:.2e} (tight budget: {tight_diff:.2e})."
    )
    print(f"fast path: {stats['groups']} groups, chunks of {stats['chunk_samples']} samples, up to {stats['max_copies']} "
          f"copies stacked (tight budget: chunks of {small['chunk_samples']}, up to {small['max_copies']}).")  # fmt: skip
    print(f"work: the naive loop does {naive['flops'] / fast['flops']:.1f}x the FLOPs of the fast path, the ceiling "
          "of what skipping the layers an ablation cannot change saves on this mix of knockouts.")  # fmt: skip
    print("held by engine = measured peak of cached activations + planned peak of the stacked copies "
          "(inputs and intermediates, from the probe); RSS includes torch itself.")  # fmt: skip
    if diff > 1e-5 or tight_diff > 1e-5:
        sys.exit("FAILED: the fast path disagrees with the naive evaluation")


if __name__ == "__main__":
    main()
