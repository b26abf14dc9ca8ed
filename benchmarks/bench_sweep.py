"""Orchestration overhead of ``ablagen sweep`` against a digits run's own training time.

Run alone: ``python benchmarks/bench_sweep.py [--lrs 1e-3,3e-3,1e-2] [--seeds 0,1]
[--epochs 5] [--jobs 1] [--repeat 1] [--naive 2] [--json PATH]`` (``--seeds`` also
takes a range, ``0-4``).

Each try is the whole command, ``ablagen sweep examples/digits_cnn.py --arms plain
--lrs ... --no-plots -q``, in a subprocess on a fresh directory, as a user runs it:
the pool starts when the command starts and imports torch while the command imports
its own and generates the scripts. Side by side, alternating (``--repeat`` times
each, the median reported): ``late``, the same with ``ABLAGEN_PRESTART=0`` (the pool
started once the runs are planned).

The subprocess is timed from inside (this file re-runs itself as ``--child``, which
wraps the real code path with timers and a counter, nothing replaced): the
orchestration overhead per run is the process-seconds of ``run_study`` not spent
training, ``(run_study wall * jobs - sum of the scripts' own wall_time_s) / runs``;
the target is under 10 % of a run's own time (its ``wall_time_s``). Generation
before ``run_study`` and the analysis after it are not orchestration; the whole
command is reported too, with everything but training counted. The overhead is
split, in process-seconds per run:

* ``pool_wait``: each worker slot from ``run_study``'s start until its worker is
  ready (the part of the pool's start the early start did not hide);
* ``in_run``: inside each run's process, beyond the script's own ``wall_time_s``
  (the fork, the script's module code and argument parsing, its result file, its
  exit: the worker's fork-to-reaped time minus the script's);
* ``tail``: each worker slot idle from its last run's end until ``run_study``
  returns (35 equal runs on 2 workers leave one run alone at the end);
* ``hand_out``: the rest (a run's outcome stored and the next claimed, both SQLite
  commits, the request and reply, the planning inside ``run_study``).

``pool_starts`` counts the worker zygotes the command started (``subprocess.Popen``
of ``worker.py``): one per command. ``python benchmarks/bench_sweep.py --child
TIMELINE.json ARGV...`` times any ``ablagen ARGV...`` so (``ablagen study``: one
``run_study`` call per stage, one pool for all). For scale, the same scripts are also started
cold, one ``python SCRIPT`` each (the naive loop).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _child(timeline: Path, argv: list[str]) -> int:
    """Run ``ablagen ARGV`` in this process with timers around the real code path;
    write what they saw to ``timeline`` at exit."""
    from ablagen.orchestrate import local, runner

    start = time.perf_counter()
    seen: dict = {"calls": [], "ready": [], "runs": [], "pool_starts": 0}

    def now() -> float:
        return time.perf_counter() - start

    popen = subprocess.Popen

    class Counted(popen):  # type: ignore[misc,valid-type]
        def __init__(self, args, *a, **k):
            if str(local.WORKER) in map(str, args):
                seen["pool_starts"] += 1
            super().__init__(args, *a, **k)

    subprocess.Popen = Counted  # type: ignore[misc]
    run_study, warm, run = (
        runner._run_study,
        local._Worker.warm,
        local.LocalBackend._run,
    )

    def timed_run_study(*args, **kwargs):
        begun = now()
        try:
            return run_study(*args, **kwargs)
        finally:
            seen["calls"].append((begun, now()))

    def timed_warm(self) -> None:
        fresh = self.pid is None
        warm(self)
        if fresh:
            seen["ready"].append(now())

    def timed_run(self, worker, spec, env):
        begun = now()
        try:
            return run(self, worker, spec, env)
        finally:
            seen["runs"].append((threading.current_thread().name, begun, now()))

    runner._run_study = timed_run_study
    local._Worker.warm = timed_warm
    local.LocalBackend._run = timed_run
    from ablagen.cli import main

    try:
        return main(argv)
    finally:
        seen["exit"] = now()
        timeline.write_text(json.dumps(seen))


def _records(out: Path) -> tuple[list[float], list[float]]:
    """(each ok run's own wall_time_s, its worker's fork-to-reaped time)."""
    from ablagen.rank.ranking import load_records

    records = [r for r in load_records(out) if r.ok]
    return [r.result["wall_time_s"] for r in records], [r.wall_time_s for r in records]


def _try(args: argparse.Namespace, out: Path, late: bool) -> dict:
    """One ``ablagen sweep`` command, timed from inside; its figures."""
    timeline = out.with_suffix(".timeline.json")
    argv = ["sweep", str(ROOT / "examples" / "digits_cnn.py"), "--arms", "plain",
            "--lrs", args.lrs, "--seeds", args.seeds, "--epochs", str(args.epochs),
            "--jobs", str(args.jobs), "--out", str(out), "--no-plots", "--quiet"]  # fmt: skip
    paths = [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    env.pop("ABLAGEN_PRESTART", None)
    if late:
        env["ABLAGEN_PRESTART"] = "0"
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, __file__, "--child", str(timeline), *argv],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    command = time.perf_counter() - started
    seen = json.loads(timeline.read_text())
    train, held = _records(out)
    runs, jobs = len(train), args.jobs
    (begun, ended), *more = seen["calls"]
    assert not more, "ablagen sweep calls run_study once"
    wall = ended - begun
    overhead = wall * jobs - sum(train)
    pool_wait = sum(max(0.0, r - begun) for r in seen["ready"][:jobs])
    last: dict[str, float] = {}
    for worker, _, end in seen["runs"]:
        last[worker] = max(last.get(worker, 0.0), end)
    tail = sum(ended - end for end in last.values()) + (jobs - len(last)) * wall
    in_run = sum(held) - sum(train)
    return {
        "runs": runs,
        "train_s": statistics.mean(train),
        "run_study_wall_s": wall,
        "generate_s": begun,  # the command's start up to run_study: CLI, torch, scripts
        "command_wall_s": command,
        "overhead_s": overhead / runs,
        "ratio": overhead / runs / statistics.mean(train),
        "pool_wait_s": pool_wait / runs,
        "pool_ready_after_s": max(seen["ready"][:jobs]) - begun,
        "in_run_s": in_run / runs,
        "tail_s": tail / runs,
        "hand_out_s": (overhead - pool_wait - in_run - tail) / runs,
        "command_overhead_s": (command * jobs - sum(train)) / runs,
        "pool_starts": seen["pool_starts"],
    }


def _naive(args: argparse.Namespace, tmp: Path) -> list[float]:
    """Seconds beyond training of a cold ``python SCRIPT`` (the first scripts)."""
    study = tmp / "early0"
    scripts = sorted(study.glob("plain__*.py"))[: args.naive]
    costs = []
    for script in scripts:
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, script, "--seed", "0", "--out", tmp / "r.json"],
            check=True, capture_output=True,
        )  # fmt: skip
        own = json.loads((tmp / "r.json").read_text())["wall_time_s"]
        costs.append(time.perf_counter() - t0 - own)
    return costs


def _median(tries: list[dict]) -> dict:
    """The try with the median overhead, with every try's ratio."""
    ordered = sorted(tries, key=lambda t: t["overhead_s"])
    return dict(
        ordered[len(ordered) // 2], ratios=[round(t["ratio"], 4) for t in tries]
    )


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(_child(Path(sys.argv[2]), sys.argv[3:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", default="1e-3,3e-3,1e-2")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="each way, alternating")
    parser.add_argument("--naive", type=int, default=2, help="cold runs for scale")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    load = [os.getloadavg()[0]] if hasattr(os, "getloadavg") else []
    with tempfile.TemporaryDirectory() as tmp:
        tries: dict[str, list[dict]] = {"early": [], "late": []}
        for i in range(args.repeat):
            for name in tries:
                out = Path(tmp) / f"{name}{i}"
                tries[name].append(_try(args, out, late=name == "late"))
                load += [os.getloadavg()[0]] if load else []
        naive = _naive(args, Path(tmp))
    modes = {name: _median(each) for name, each in tries.items()}
    report = {
        "jobs": args.jobs,
        "epochs": args.epochs,
        "repeat": args.repeat,
        "target_ratio": 0.10,
        **{
            name: {
                k: round(v, 4) if isinstance(v, float) else v for k, v in mode.items()
            }
            for name, mode in modes.items()
        },
        "naive_overhead_s": round(statistics.mean(naive), 3) if naive else None,
        "load_average_1min": [round(x, 2) for x in load],
    }
    print(json.dumps(report, indent=2))
    for name, m in modes.items():
        print(
            f"pool {name}: orchestration {m['overhead_s']:.3f} s per run = "
            f"{m['ratio']:.1%} of a run's own {m['train_s']:.3f} s (target < 10 %; "
            f"tries {', '.join(f'{r:.1%}' for r in m['ratios'])}): pool wait "
            f"{m['pool_wait_s']:.3f} (ready {m['pool_ready_after_s']:.2f} s into "
            f"run_study), in-run {m['in_run_s']:.3f}, tail {m['tail_s']:.3f}, hand-out "
            f"{m['hand_out_s']:.3f}; the whole command {m['command_wall_s']:.2f} s "
            f"({m['generate_s']:.2f} s before run_study), {m['command_overhead_s']:.3f} s "
            f"per run beyond training; {m['pool_starts']} pool start(s)"
        )
    if naive:
        print(
            f"a cold `python script.py`: {report['naive_overhead_s']} s beyond training"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
