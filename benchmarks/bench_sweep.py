"""Per-run orchestration overhead of ``ablagen sweep`` against a digits run's training time.

Run alone: ``python benchmarks/bench_sweep.py [--lrs 1e-3,3e-3,1e-2] [--seeds 0,1]
[--epochs 5] [--jobs 1] [--json PATH]``.

A sweep of ``examples/digits_cnn.py`` (plain arm) is generated into a temporary
directory and run by the orchestrator (the warm worker pool), as ``ablagen sweep``
runs it. The overhead per run is the process-seconds not spent training,
``(wall * jobs - sum of the scripts' own wall_time_s) / runs``; the target is under
10 % of a run's training time (its ``wall_time_s``). For scale, the same scripts are
also started cold, one ``python SCRIPT`` each (the naive loop), side by side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from ablagen.orchestrate import RunOptions, run_study  # noqa: E402
from ablagen.ranking import load_records  # noqa: E402
from ablagen.sweep import SweepOptions, generate_sweep, parse_lrs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", default="1e-3,3e-3,1e-2")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--naive", type=int, default=2, help="cold runs for scale")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    seeds = tuple(int(s) for s in args.seeds.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sweep"
        opts = SweepOptions(
            target=str(ROOT / "examples" / "digits_cnn.py"),
            lrs=parse_lrs(args.lrs),
            arms=("plain",),
            seeds=seeds,
            out=out,
            train={"epochs": args.epochs},
        )
        started = time.perf_counter()
        generated = generate_sweep(opts)
        generate_s = time.perf_counter() - started
        started = time.perf_counter()
        summary = run_study(out, RunOptions(jobs=args.jobs, seeds=seeds))
        wall = time.perf_counter() - started
        records = [r for r in load_records(out) if r.ok]
        runs = len(records)
        train = [r.result["wall_time_s"] for r in records]
        overhead = (wall * args.jobs - sum(train)) / runs
        naive = []
        for point in generated.points[: args.naive]:
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, out / point.script, "--seed", "0", "--out", Path(tmp) / "r.json"],
                check=True, capture_output=True,
            )  # fmt: skip
            naive.append(
                time.perf_counter()
                - t0
                - json.loads((Path(tmp) / "r.json").read_text())["wall_time_s"]
            )
    mean_train = sum(train) / runs
    report = {
        "runs": runs,
        "jobs": args.jobs,
        "epochs": args.epochs,
        "all_ok": summary.all_ok,
        "generate_s": round(generate_s, 3),
        "orchestrated_wall_s": round(wall, 3),
        "train_s_per_run": round(mean_train, 3),
        "overhead_s_per_run": round(overhead, 3),
        "overhead_ratio": round(overhead / mean_train, 4),
        "target_ratio": 0.10,
        "naive_overhead_s_per_run": (
            round(sum(naive) / len(naive), 3) if naive else None
        ),
    }
    print(json.dumps(report, indent=2))
    print(
        f"per-run orchestration overhead {overhead:.3f} s = {overhead / mean_train:.1%} of a "
        f"digits run's training time ({mean_train:.2f} s; target < 10 %); a cold "
        f"`python script.py` costs {report['naive_overhead_s_per_run']} s beyond training"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
