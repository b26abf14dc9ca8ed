"""Per-run orchestration overhead of ``ablagen sweep`` against a digits run's training time.

Run alone: ``python benchmarks/bench_sweep.py [--lrs 1e-3,3e-3,1e-2] [--seeds 0,1]
[--epochs 5] [--jobs 1] [--repeat 1] [--no-command] [--json PATH]`` (``--seeds``
also takes a range, ``0-4``).

A sweep of ``examples/digits_cnn.py`` (plain arm) is generated into a temporary
directory and run by the orchestrator (the warm worker pool), as ``ablagen sweep``
does: the pool starts before generation and imports torch while the scripts are
generated (``local.warm_pool``), and ``run_study`` adopts it. The overhead per run
is the process-seconds not spent training, ``(wall * jobs - sum of the scripts' own
wall_time_s) / runs``, where ``wall`` is ``run_study``'s (what is left of the
pool's start once generation is done counts; generation does not); the target is
under 10 % of a run's training time (its ``wall_time_s``). Side by side, alternating
(``--repeat`` times each, the median reported): ``late_pool_*``, the same with the
pool started by ``run_study`` once generation is done (the whole start counted).

It is split in two, from the same run:

* ``in_run_s_per_run``: inside each run's process, beyond the script's own
  ``wall_time_s`` (the fork, the script's module code and argument parsing, its
  result file, its exit; the worker's fork-to-reaped time minus the script's);
* ``outside_runs_s_per_run``: the rest, the process-seconds no run held a worker:
  the pool's start (``pool_ready_s``: its workers importing torch, torch._dynamo,
  numpy, sklearn, timed on their own), handing runs out and storing outcomes,
  and worker slots left idle when fewer runs than workers are left.

``command_*``: unless ``--no-command``, the whole ``ablagen sweep`` command (CLI
start, torch import, generation, the runs, analysis and report; ``--arms plain
--no-plots``) in a subprocess, on a fresh directory, twice: as it runs by default
(the pool started when the command starts) and with ``ABLAGEN_PRESTART=0`` (the
pool started once the runs are planned, as before); ``(wall * jobs - sum of the
scripts' own wall_time_s) / runs`` for each, everything but training counted. For
scale, the same scripts are also started cold, one ``python SCRIPT`` each (the
naive loop).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from ablagen.orchestrate import RunOptions, parse_seeds, run_study  # noqa: E402
from ablagen.orchestrate import local  # noqa: E402
from ablagen.rank.ranking import load_records  # noqa: E402
from ablagen.sweep import SweepOptions, generate_sweep, parse_lrs  # noqa: E402


def _timed_ready() -> list[float]:
    """Record when each warm worker of the next pool says it is ready."""
    ready: list[float] = []
    warm = local._Worker.warm

    def timed(self) -> None:
        fresh = self.pid is None
        warm(self)
        if fresh:
            ready.append(time.perf_counter())

    local._Worker.warm = timed
    return ready


def _runs(out: Path) -> tuple[list[float], list[float]]:
    """(each ok run's own wall_time_s, its worker's fork-to-reaped time)."""
    records = [r for r in load_records(out) if r.ok]
    return [r.result["wall_time_s"] for r in records], [r.wall_time_s for r in records]


def _command(
    args: argparse.Namespace, out: Path, env: dict[str, str]
) -> tuple[float, float]:
    """(wall, overhead per run) of the whole ``ablagen sweep`` command."""
    argv = [sys.executable, "-m", "ablagen", "sweep", str(ROOT / "examples" / "digits_cnn.py"),
            "--arms", "plain", "--lrs", args.lrs, "--seeds", args.seeds, "--epochs",
            str(args.epochs), "--jobs", str(args.jobs), "--out", str(out), "--no-plots",
            "--quiet"]  # fmt: skip
    paths = [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    started = time.perf_counter()
    subprocess.run(
        argv, check=True, capture_output=True,
        env={**os.environ, **env, "PYTHONPATH": os.pathsep.join(paths)},
    )  # fmt: skip
    wall = time.perf_counter() - started
    train, _ = _runs(out)
    return wall, (wall * args.jobs - sum(train)) / len(train)


def _orchestrated(
    args: argparse.Namespace, out: Path, seeds: tuple[int, ...], early: bool
) -> dict:
    """Generate the sweep and run it. ``early``: as ``ablagen sweep`` does, the pool
    starts before generation (``local.warm_pool``) and imports torch meanwhile;
    else ``run_study`` starts it once generation is done. ``wall_s`` is
    ``run_study``'s: generation is not orchestration, the pool's start is."""
    opts = SweepOptions(
        target=str(ROOT / "examples" / "digits_cnn.py"),
        lrs=parse_lrs(args.lrs),
        arms=("plain",),
        seeds=seeds,
        out=out,
        train={"epochs": args.epochs},
    )
    options = RunOptions(jobs=args.jobs, seeds=seeds)
    ready = _timed_ready()
    begun = time.perf_counter()
    with contextlib.ExitStack() as stack:
        warm = stack.enter_context(local.warm_pool(out, options)) if early else None
        generated = generate_sweep(opts)
        generate_s = time.perf_counter() - begun
        started = time.perf_counter()
        summary = run_study(out, options, warm=warm)
        wall = time.perf_counter() - started
    local._Worker.warm = _WARM
    train, held = _runs(out)
    return {
        "generated": generated,
        "all_ok": summary.all_ok,
        "generate_s": generate_s,
        "wall_s": wall,
        "pool_ready_s": max(ready) - started if ready else None,
        "train": train,
        "held": held,
    }


_WARM = local._Worker.warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", default="1e-3,3e-3,1e-2")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="each way, alternating")
    parser.add_argument("--naive", type=int, default=2, help="cold runs for scale")
    parser.add_argument("--no-command", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    seeds = parse_seeds(args.seeds)
    with tempfile.TemporaryDirectory() as tmp:
        tries: dict[str, list[dict]] = {"early": [], "late": []}
        for i in range(args.repeat):
            for name in ("early", "late"):
                out = Path(tmp) / f"{name}{i}" / "sweep"
                tries[name].append(_orchestrated(args, out, seeds, name == "early"))
        modes = {}
        for name, runs_of in tries.items():
            per = []
            for one in runs_of:
                n = len(one["train"])
                per.append((one["wall_s"] * args.jobs - sum(one["train"])) / n)
            mid = sorted(range(len(per)), key=per.__getitem__)[len(per) // 2]
            modes[name] = dict(runs_of[mid], overhead=per[mid], overheads=per)
        chosen = modes["early"]
        generated, summary_ok = chosen["generated"], chosen["all_ok"]
        train, held, wall = chosen["train"], chosen["held"], chosen["wall_s"]
        generate_s, pool_ready = chosen["generate_s"], chosen["pool_ready_s"]
        out = Path(tmp) / "early0" / "sweep"
        runs = len(train)
        overhead = chosen["overhead"]
        command: dict[str, tuple[float, float]] = {}
        if not args.no_command:
            for name, env in (("early", {}), ("late", {"ABLAGEN_PRESTART": "0"})):
                out2 = Path(tmp) / f"sweep-{name}"
                command[name] = _command(args, out2, env)
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
    in_run = (sum(held) - sum(train)) / runs
    report = {
        "runs": runs,
        "jobs": args.jobs,
        "epochs": args.epochs,
        "all_ok": summary_ok,
        "generate_s": round(generate_s, 3),
        "orchestrated_wall_s": round(wall, 3),
        "train_s_per_run": round(mean_train, 3),
        "overhead_s_per_run": round(overhead, 3),
        "overhead_ratio": round(overhead / mean_train, 4),
        "target_ratio": 0.10,
        "in_run_s_per_run": round(in_run, 4),
        "in_run_median_s": round(
            statistics.median(h - t for h, t in zip(held, train)), 4
        ),
        "outside_runs_s_per_run": round(overhead - in_run, 4),
        "pool_ready_s": None if pool_ready is None else round(pool_ready, 3),
        "late_pool_overhead_s_per_run": round(modes["late"]["overhead"], 3),
        "late_pool_overhead_ratio": round(modes["late"]["overhead"] / mean_train, 4),
        "late_pool_ready_s": (
            None
            if modes["late"]["pool_ready_s"] is None
            else round(modes["late"]["pool_ready_s"], 3)
        ),
        "overheads_s_per_run": {
            name: [round(x, 3) for x in mode["overheads"]] for name, mode in modes.items()
        },
        **{
            f"command_{name}_pool_{key}": round(value, 3)
            for name, (wall_s, per_run) in command.items()
            for key, value in (("wall_s", wall_s), ("overhead_s_per_run", per_run))
        },
        "naive_overhead_s_per_run": (
            round(sum(naive) / len(naive), 3) if naive else None
        ),
        "load_average": (
            open("/proc/loadavg").read().split()[:3]
            if Path("/proc/loadavg").exists()
            else None
        ),
    }
    print(json.dumps(report, indent=2))
    print(
        f"per-run orchestration overhead {overhead:.3f} s = {overhead / mean_train:.1%} of a "
        f"digits run's training time ({mean_train:.2f} s; target < 10 %): "
        f"{in_run:.3f} s inside each run's process, {overhead - in_run:.3f} s outside "
        f"the runs (the pool was ready {report['pool_ready_s']} s into the runs); with "
        f"the pool started once generation is done instead: "
        f"{report['late_pool_overhead_s_per_run']:.3f} s = "
        f"{report['late_pool_overhead_ratio']:.1%} (ready after "
        f"{report['late_pool_ready_s']} s); a cold "
        f"`python script.py` costs {report['naive_overhead_s_per_run']} s beyond training"
    )
    for name, (wall_s, per_run) in command.items():
        print(
            f"`ablagen sweep` ({name} pool), the whole command: {wall_s:.2f} s, "
            f"{per_run:.3f} s per run beyond the scripts' own time"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
