"""Issue 27, part 4: the orchestrator at 10,000 runs of a trivial script.

Run alone: ``python benchmarks/bench_scale.py [--runs 10000] [--variants 100]
[--backends local,ray] [--jobs 2] [--json PATH] [--keep DIR]``.

A synthetic study (no generator, no torch in the scripts): ``--variants`` scripts
(a baseline and layer variants) whose manifest lists ``--runs / --variants`` seeds;
each run parses its arguments, writes its result JSON and exits. For each backend,
``ablagen run``'s own code path (``run_study``, the pool started first thing, as the
CLI does) runs every run into a fresh ``results.sqlite``, in a child process of this
one, which reports:

* ``runs_per_s``: runs / the wall time of ``run_study`` (pool start included);
* ``claim_ms`` and ``finish_ms`` (p50, p99): the store's two writes per run, each one
  ``BEGIN IMMEDIATE`` ... ``COMMIT`` with ``synchronous=FULL``, timed around
  ``ResultStore.claim`` and ``ResultStore.finish``;
* ``instant`` (a backend of this benchmark): no processes at all, every run done
  when submitted: the runner's and the store's own ceiling;
* ``local-bare``: the local pool with workers that preload nothing (no torch): a
  fork of a small process per run instead of one holding torch;
* ``driver_peak_rss_mb``: the driver process's peak resident set size
  (``ru_maxrss``; its children, the workers and runs, are not in it), and
  ``driver_rss_growth_mb``: how much the RSS grew between the 10th and the last
  100th of the runs, and ``driver_rss_tenths_mb``: the RSS at each tenth of them
  (flat in the number of runs: SQLite's page cache, 2 MB, fills, then nothing grows).

Then, on the study the last backend filled, ``ablagen status STUDY --json`` and
``ablagen rank STUDY --no-plots`` are timed as commands (Python start and imports
included), best of 3 each. Goals (a 2-core machine): >= 50 runs/s local, >= 20
runs/s Ray; ``status`` and ``rank`` under 2 s; driver memory flat in the runs.

Compare sizes in one invocation (``--runs 1000,10000``) so both share the
machine's load at the time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = "manifest.json"

TRIVIAL = '''"""Trivial variant {index}: writes its result JSON and exits."""

import json
import os
import sys

argv = dict(zip(sys.argv[1::2], sys.argv[2::2]))
seed = int(argv.get("--seed", 0))
acc = 0.5 + 0.001 * {index} + 0.0001 * (seed % 7)
result = {{"schema": 1, "status": "ok", "seed": seed, "epochs": 1,
          "final": {{"val_acc": acc, "val_loss": 1.0 - acc}}, "wall_time_s": 0.0}}
out = argv.get("--out")
if out:
    with open(out + ".tmp", "w") as fh:
        json.dump(result, fh)
    os.replace(out + ".tmp", out)
'''


def synthetic_study(study: Path, runs: int, variants: int) -> Path:
    """``variants`` trivial scripts, ``runs // variants`` seeds in the manifest."""
    sys.path.insert(0, str(ROOT / "src"))
    from ablagen.core.atomic import sha256_file
    from ablagen.core.studydir import Manifest, VariantEntry

    study.mkdir(parents=True)
    seeds = max(1, runs // variants)
    entries = []
    for i in range(variants):
        vid = "baseline" if i == 0 else f"layer{i}:zero"
        script = "baseline.py" if i == 0 else f"layer{i}__zero.py"
        (study / script).write_text(TRIVIAL.format(index=i))
        entries.append(
            VariantEntry(
                vid,
                None if i == 0 else f"layer{i}",
                "baseline" if i == 0 else "layer",
                None if i == 0 else "zero",
                script,
                sha256_file(study / script),
            )
        )
    manifest = Manifest(
        "0.1.0",
        "retrain",
        {
            "path": "synthetic",
            "sha256": "",
            "name": "Trivial",
            # what `ablagen rank` maps its noise scales onto: a weight per layer
            "parameters": [[f"layer{i}.weight", [4, 4]] for i in range(1, variants)],
        },
        {"seeds": list(range(seeds))},
        tuple(entries),
    )
    (study / MANIFEST).write_text(manifest.dumps())
    return study


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class InstantBackend:
    """``--backends instant``: every run is done the moment it is submitted, in this
    process (no worker, no script): what is left is the runner and the store, the
    orchestrator's own ceiling."""

    name = "instant"

    def __init__(self, study: Path, options, tmp: Path, scripts) -> None:
        self.capacity = options.jobs or 2
        self.done: list = []

    def describe(self) -> str:
        return "in-process, instant"

    def __enter__(self) -> InstantBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, spec) -> None:
        from ablagen.orchestrate.outcome import RawOutcome

        result = {"schema": 1, "status": "ok", "seed": spec.seed, "epochs": 1,
                  "final": {"val_acc": 0.5, "val_loss": 0.5}, "wall_time_s": 0.0}  # fmt: skip
        self.done.append(
            RawOutcome(spec, 0, 0.0, json.dumps(result), backend="instant")
        )

    def next_done(self, timeout: float | None = None):
        return self.done.pop(0) if self.done else None

    def close(self) -> None:
        self.done.clear()


def child(study: Path, backend: str, jobs: int) -> dict:
    """One backend's run of the whole study, in this (fresh) process."""
    from ablagen.orchestrate import RunOptions, run_study
    from ablagen.orchestrate.backends import register_backend
    from ablagen.orchestrate.store import ResultStore

    register_backend("instant", InstantBackend)

    total = len(json.loads((study / MANIFEST).read_text())["variants"]) * len(
        json.loads((study / MANIFEST).read_text())["config"]["seeds"]
    )
    # latencies go into arrays allocated up front, so that the driver's memory
    # growth measured below is the orchestrator's, not this instrumentation's
    timings = {name: array("d", bytes(8 * total)) for name in ("claim", "finish")}
    counts = dict.fromkeys(timings, 0)
    for name in timings:
        original = getattr(ResultStore, name)

        def timed(self, *args, _original=original, _name=name, **kwargs):
            start = time.perf_counter()
            try:
                return _original(self, *args, **kwargs)
            finally:
                i = counts[_name]
                if i < total:
                    timings[_name][i] = time.perf_counter() - start
                    counts[_name] = i + 1

        setattr(ResultStore, name, timed)

    rss: dict[str, float] = {}
    tenths: list[float] = []  # the RSS at each tenth of the runs

    def progress(event) -> None:
        if event.event == "finished":
            if event.done == max(1, total // 10):
                rss["tenth"] = _rss_mb()
            if event.done == total - max(1, total // 100):
                rss["last"] = _rss_mb()
            if event.done % max(1, total // 10) == 0:
                tenths.append(round(_rss_mb(), 1))

    bare = backend.endswith("-bare")  # workers that preload nothing (no torch)
    options = RunOptions(
        jobs=jobs, backend=backend.removesuffix("-bare"), preload=() if bare else None
    )
    start = time.perf_counter()
    summary = run_study(study, options, progress=progress)
    wall = time.perf_counter() - start

    def pct(name: str, q: float) -> float:
        values = sorted(timings[name][: counts[name]])
        return round(1000 * values[min(len(values) - 1, int(q * len(values)))], 2)

    return {
        "backend": backend,
        "runs": summary.ran,
        "ok": summary.ran_ok,
        "wall_s": round(wall, 2),
        "runs_per_s": round(summary.ran / wall, 1),
        "claim_ms": {
            "p50": pct("claim", 0.5),
            "p99": pct("claim", 0.99),
        },
        "finish_ms": {
            "p50": pct("finish", 0.5),
            "p99": pct("finish", 0.99),
        },
        "driver_peak_rss_mb": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
        ),
        "driver_rss_growth_mb": round(rss.get("last", 0.0) - rss.get("tenth", 0.0), 1),
        "driver_rss_tenths_mb": tenths,
    }


def _env(src: Path) -> dict[str, str]:
    """This environment, with ``src`` (an ablagen source tree) first on the path."""
    paths = [str(src), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def timed_commands(commands: dict[str, list[str]], src: Path, repeat: int = 3) -> dict:
    """Best of ``repeat`` wall times of each command, taking turns."""
    best = dict.fromkeys(commands, float("inf"))
    for _ in range(repeat):
        for name, argv in commands.items():
            start = time.perf_counter()
            proc = subprocess.run(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                env=_env(src),
            )  # fmt: skip
            if proc.returncode != 0:
                raise SystemExit(
                    f"{' '.join(argv[2:])} exited {proc.returncode}: {proc.stderr[-400:]}"
                )
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: round(value, 2) for name, value in best.items()}


def measure(
    runs: int,
    variants: int,
    backends: list[str],
    jobs: int,
    keep: Path | None,
    src: Path = ROOT / "src",
) -> dict:
    base = Path(tempfile.mkdtemp(prefix="ablagen-bench-scale-"))
    figures: dict = {"runs": runs, "variants": variants, "jobs": jobs, "backends": {}}
    try:
        template = synthetic_study(base / "template", runs, variants)
        study = template
        for backend in backends:
            study = base / backend
            shutil.copytree(template, study)
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(study), backend, str(jobs)],
                capture_output=True,
                text=True,
                check=False,
                env=_env(src),
            )
            if proc.returncode != 0:
                figures["backends"][backend] = {"error": proc.stderr.strip()[-400:]}
                continue
            figures["backends"][backend] = json.loads(proc.stdout.splitlines()[-1])
        cli = [sys.executable, "-m", "ablagen"]
        times = timed_commands(
            {
                "help_s": [*cli, "--help"],  # the CLI's fixed start, for scale
                "status_s": [*cli, "status", str(study)],
                "status_json_s": [*cli, "status", str(study), "--json"],
                "rank_s": [*cli, "rank", str(study), "--no-plots"],
            },
            src,
        )
        figures.update(times)
        if keep is not None:
            shutil.copytree(study, keep / f"{runs}", dirs_exist_ok=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return figures


def _print(runs: int, tree: str, figures: dict) -> None:
    for backend, f in figures["backends"].items():
        if "error" in f:
            print(f"{runs} runs, {backend} ({tree}): failed: {f['error']}")
            continue
        print(
            f"{runs} runs, {backend} ({tree}): {f['runs_per_s']} runs/s ({f['wall_s']} s,"
            f" {f['ok']} ok); claim p50/p99 {f['claim_ms']['p50']}/{f['claim_ms']['p99']} ms,"
            f" finish p50/p99 {f['finish_ms']['p50']}/{f['finish_ms']['p99']} ms;"
            f" driver peak RSS {f['driver_peak_rss_mb']} MB,"
            f" grew {f['driver_rss_growth_mb']} MB from 10 % to 99 % of the runs"
            f" (at each tenth: {f['driver_rss_tenths_mb']} MB)"
        )
    print(
        f"{runs} runs ({tree}): ablagen status {figures['status_s']} s"
        f" (--json {figures['status_json_s']} s), ablagen rank --no-plots"
        f" {figures['rank_s']} s; ablagen --help {figures['help_s']} s"
    )


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        sys.path.insert(0, os.environ["PYTHONPATH"].split(os.pathsep)[0])
        print(json.dumps(child(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", default="10000", help="one size, or several: 1000,10000"
    )
    parser.add_argument("--variants", type=int, default=100)
    parser.add_argument("--backends", default="local,ray")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--keep", type=Path, default=None, help="copy the last study here"
    )
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        help="an older ablagen source tree (its src/): each size runs on it too, first",
    )
    args = parser.parse_args()
    load = os.getloadavg()[0]
    results = []
    trees = [("this", ROOT / "src")]
    if args.before is not None:
        trees.insert(0, ("before", args.before.resolve()))
    for runs in (int(r) for r in args.runs.split(",")):
        for tree, src in trees:
            figures = measure(
                runs, args.variants, args.backends.split(","), args.jobs, args.keep, src
            )
            figures["tree"] = tree
            figures["load_avg_1m_before"] = round(load, 2)
            results.append(figures)
            _print(runs, tree, figures)
            load = os.getloadavg()[0]
    print(
        f"load average (1 min) before each: {[r['load_avg_1m_before'] for r in results]}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
