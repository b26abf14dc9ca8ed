"""What the orchestrator saves: ``ablagen run --jobs 2`` against the naive shell loop.

Run alone: ``python benchmarks/bench_orchestrate.py [--study DIR | --synthetic N]
[--model FILE] [--epochs 1] [--jobs 2] [--json PATH]``.

``--overhead`` instead measures issue 20's figures side by side, in one run, on the
same study: a generated script's start-up beyond a bare ``import torch`` process
(``bench_startup``'s measure, best of 3); ``ablagen run --backend local`` against
``--backend ray`` (warm actors) with the ``ray.init`` time measured on its own
(goal: ray <= local + ray.init + 2 s), with whether both gave the same metrics,
and ``ray.shutdown()`` of a local instance as Ray does it against the backend's
(its helper processes SIGKILLed first), best of two each;
and the time from launching ``ablagen run --backend local`` to its first run's
start with the pool started once the runs are planned (``ABLAGEN_PRESTART=0``, as
before) and at once (the default), best of two each, alternating.

The study: ``--study DIR`` (copied, so its own store is untouched), else a
synthetic one of N tiny torch scripts (``--synthetic N``), else one generated
with ``ablagen generate MODEL`` (default ``examples/digits_cnn.py``; a synthetic
study of 24 scripts if generation fails). Both contestants run in this one
process, one after the other, on the same scripts:

naive         ``for f in *.py; do python $f --epochs E --seed 0 --out ...; done``
              (``--naive-threads T`` sets OMP_NUM_THREADS=T for it: a fairer loop
              on a busy machine, where every core is already taken)
orchestrator  ``python -m ablagen run STUDY --jobs J --epochs E`` on a fresh store

Reported: both wall times and their ratio (the goal is >= 3x), the pure training
time (the sum of the scripts' own ``wall_time_s``), and the overhead per variant:
naive ``(wall - train) / N``; orchestrator ``(wall * J - train) / N``, i.e. the
process-seconds per variant not spent training. Also whether both gave the same
metrics (they should on CPU with the same thread count; the loop uses all cores,
each of the J workers cores/J threads, so tiny float differences are possible).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from ablagen.core.atomic import sha256_file  # noqa: E402
from ablagen.core.studydir import (  # noqa: E402
    LOGS_DIR,
    MANIFEST,
    RESULTS_DB,
    Manifest,
    VariantEntry,
    load_manifest,
)

SYNTHETIC = '''"""Synthetic ablation variant {index}: a small MLP of hidden width {hidden}."""

import argparse
import json
import time

import torch
from torch import nn

HIDDEN = {hidden}
parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--device", default="cpu")
parser.add_argument("--out", default=None)
args = parser.parse_args()

torch.manual_seed(args.seed)
x = torch.randn(1024, 32)
y = (x[:, :8].sum(dim=1) > 0).long()
model = nn.Sequential(nn.Linear(32, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2))
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
start = time.perf_counter()
for epoch in range(args.epochs):
    for i in range(0, 1024, 64):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
        loss.backward()
        opt.step()
with torch.no_grad():
    acc = (model(x).argmax(1) == y).float().mean().item()
result = {{"schema": 1, "status": "ok", "seed": args.seed, "epochs": args.epochs,
          "final": {{"train_loss": loss.item(), "val_acc": acc}},
          "wall_time_s": time.perf_counter() - start}}
if args.out:
    with open(args.out, "w") as fh:
        json.dump(result, fh)
print(f"hidden {{HIDDEN}}: val_acc {{acc:.4f}}")
'''


def synthetic_study(study: Path, n: int) -> Path:
    study.mkdir(parents=True)
    entries = []
    for i in range(n):
        vid = "baseline" if i == 0 else f"hidden{i}:width"
        script = "baseline.py" if i == 0 else f"hidden{i}__width.py"
        (study / script).write_text(SYNTHETIC.format(index=i, hidden=16 + 4 * i))
        entries.append(
            VariantEntry(
                vid,
                None if i == 0 else f"hidden{i}",
                "baseline" if i == 0 else "layer",
                None if i == 0 else "width",
                script,
                sha256_file(study / script),
            )
        )
    manifest = Manifest(
        "0.1.0",
        "retrain",
        {"path": "synthetic", "sha256": "", "name": "MLP"},
        {},
        tuple(entries),
    )
    (study / MANIFEST).write_text(manifest.dumps())
    return study


def generated_study(study: Path, model: Path) -> Path | None:
    proc = subprocess.run(
        [sys.executable, "-m", "ablagen", "generate", str(model), "--out", str(study)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        print(
            f"(ablagen generate failed: {proc.stderr.strip()[:200]}; using a synthetic study)"
        )
        return None
    return study


def run_naive(
    study: Path, epochs: int, out_dir: Path, threads: int | None
) -> tuple[float, dict[str, dict]]:
    out_dir.mkdir()
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    results = {}
    start = time.perf_counter()
    for entry in load_manifest(study).variants:
        out = out_dir / f"{Path(entry.script).stem}.json"
        subprocess.run(
            [
                sys.executable,
                entry.script,
                "--epochs",
                str(epochs),
                "--seed",
                "0",
                "--out",
                str(out),
            ],
            cwd=study,
            env=env,
            check=False,  # a failing script is just a missing result
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        results[entry.id] = json.loads(out.read_text()) if out.exists() else {}
    return time.perf_counter() - start, results


def run_orchestrator(
    study: Path,
    epochs: int,
    jobs: int,
    backend: str = "local",
    env: dict[str, str] | None = None,
) -> tuple[float, dict[str, dict]]:
    (study / RESULTS_DB).unlink(missing_ok=True)
    shutil.rmtree(study / LOGS_DIR, ignore_errors=True)
    start = time.perf_counter()
    LAUNCHED[study] = time.time()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ablagen",
            "run",
            str(study),
            "--jobs",
            str(jobs),
            "--epochs",
            str(epochs),
            "--backend",
            backend,
            "--quiet",
        ],
        check=False,  # exit 1 when a run failed: still timed
        stdout=subprocess.DEVNULL,
        env=None if env is None else {**os.environ, **env},
    )
    wall = time.perf_counter() - start
    conn = sqlite3.connect(study / RESULTS_DB)
    rows = conn.execute("SELECT variant_id, result_json FROM runs").fetchall()
    conn.close()
    return wall, {vid: json.loads(text) if text else {} for vid, text in rows}


LAUNCHED: dict[Path, float] = {}  # study -> unix time its last command was launched


def first_run_start(study: Path) -> float:
    """Seconds from launching the last command on ``study`` to its first run's fork
    (a run's fork: its ``finished_at`` less the ``wall_time_s`` its worker measured)."""
    conn = sqlite3.connect(study / RESULTS_DB)
    (first,) = conn.execute(
        "SELECT MIN(finished_at - wall_time_s) FROM runs"
    ).fetchone()
    conn.close()
    return float(first) - LAUNCHED[study]


RAY_INIT = """
import logging, sys, time
import ray
start = time.perf_counter()
ray.init(address="local", num_cpus=int(sys.argv[1]), include_dashboard=False,
         logging_level=logging.ERROR, log_to_driver=False)
print(time.perf_counter() - start)
ray.shutdown()
"""


RAY_SHUTDOWN = """
import logging, sys, time
import ray
from ablagen.orchestrate.ray_backend import _stop_helpers
ray.init(address="local", num_cpus=int(sys.argv[1]), include_dashboard=False,
         logging_level=logging.ERROR, log_to_driver=False)
slot = ray.remote(num_cpus=1)(type("Slot", (), {"ping": lambda self: 1}))
actors = [slot.remote() for _ in range(int(sys.argv[1]))]
ray.get([a.ping.remote() for a in actors])
for actor in actors:
    ray.kill(actor)
start = time.perf_counter()
if sys.argv[2] == "ablagen":
    _stop_helpers(ray)
ray.shutdown()
print(time.perf_counter() - start)
"""


def shutdown_times(jobs: int) -> dict[str, float]:
    """``ray.shutdown()`` of a local instance with ``jobs`` actors, as Ray does it
    and as the backend does (its helper processes SIGKILLed first), best of two
    each, alternating."""
    times: dict[str, list[float]] = {"ray": [], "ablagen": []}
    for _ in range(2):
        for how in times:
            out = subprocess.run(
                [sys.executable, "-c", RAY_SHUTDOWN, str(jobs), how],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
            )
            times[how].append(float(out.stdout.split()[-1]))
    return {how: round(min(t), 2) for how, t in times.items()}


def overhead(study: Path, epochs: int, jobs: int) -> dict[str, float | bool]:
    """Issue 20's figures side by side: start-up, local vs Ray wall time."""
    sys.path.insert(0, str(Path(__file__).parent))
    import bench_startup

    bare = min(
        bench_startup.timed([sys.executable, "-c", "import torch"], study)
        for _ in range(3)
    )
    runs = [
        bench_startup.script_run(study / "baseline.py", study.parent / "s.json")
        for _ in range(3)
    ]
    startup = min(wall - own for wall, own in runs) - bare
    init = float(
        subprocess.run(
            [sys.executable, "-c", RAY_INIT, str(jobs)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[-1]
    )
    # the pool started once the runs are planned (as before), then at once; twice
    # each, alternating, best of two: the machine's load shifts between commands
    late, early = [], []
    for _ in range(2):
        _, late_runs = run_orchestrator(
            study, epochs, jobs, "local", {"ABLAGEN_PRESTART": "0"}
        )
        late.append(first_run_start(study))
        local_wall, local = run_orchestrator(study, epochs, jobs, "local")
        early.append(first_run_start(study))
    ray_wall, ray = run_orchestrator(study, epochs, jobs, "ray")
    finals = {v: r.get("final") for v, r in local.items()}
    shutdown = shutdown_times(jobs)
    return {
        "ray_shutdown_as_ray_s": shutdown["ray"],
        "ray_shutdown_as_backend_s": shutdown["ablagen"],
        "first_run_starts_late_pool_s": round(min(late), 2),
        "first_run_starts_early_pool_s": round(min(early), 2),
        "early_pool_same_metrics": bool(finals)
        and finals == {v: r.get("final") for v, r in late_runs.items()},
        "bare_torch_import_s": round(bare, 2),
        "script_startup_beyond_torch_s": round(startup, 2),
        "local_wall_s": round(local_wall, 2),
        "ray_wall_s": round(ray_wall, 2),
        "ray_init_s": round(init, 2),
        "ray_minus_local_minus_init_s": round(ray_wall - local_wall - init, 2),
        "same_metrics": bool(finals)
        and finals == {v: r.get("final") for v, r in ray.items()},
    }


def train_time(results: dict[str, dict]) -> float:
    return sum(float(r.get("wall_time_s") or 0.0) for r in results.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--study", type=Path, help="an existing study directory (copied)"
    )
    parser.add_argument(
        "--synthetic",
        type=int,
        metavar="N",
        help="a synthetic study of N tiny torch scripts",
    )
    parser.add_argument(
        "--model", type=Path, default=ROOT / "examples" / "digits_cnn.py"
    )
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--naive-threads",
        type=int,
        help="OMP_NUM_THREADS for the loop (default: unset, torch uses every core)",
    )
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument(
        "--overhead",
        action="store_true",
        help="issue 20: script start-up, local vs ray wall time, side by side",
    )
    opts = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-orchestrate-") as tmp:
        study = Path(tmp) / "study"
        if opts.study:
            shutil.copytree(
                opts.study,
                study,
                ignore=shutil.ignore_patterns(RESULTS_DB + "*", LOGS_DIR),
            )
            source = str(opts.study)
        elif opts.synthetic:
            synthetic_study(study, opts.synthetic)
            source = f"synthetic, {opts.synthetic} scripts"
        elif generated_study(study, opts.model):
            source = f"ablagen generate {opts.model.relative_to(ROOT) if opts.model.is_relative_to(ROOT) else opts.model}"
        else:
            shutil.rmtree(study, ignore_errors=True)
            synthetic_study(study, 24)
            source = "synthetic, 24 scripts"
        n = len(load_manifest(study).variants)
        if opts.overhead:
            numbers = overhead(study, opts.epochs, opts.jobs)
            print(f"study: {source} ({n} variants, --epochs {opts.epochs})")
            print(
                f"script start-up beyond a bare torch import: "
                f"{numbers['script_startup_beyond_torch_s']:.2f} s (goal <= 0.6 s; "
                f"bare import {numbers['bare_torch_import_s']:.2f} s)"
            )
            print(
                f"--jobs {opts.jobs}: local {numbers['local_wall_s']:.2f} s, "
                f"ray {numbers['ray_wall_s']:.2f} s, ray.init {numbers['ray_init_s']:.2f} s: "
                f"ray - local - init = {numbers['ray_minus_local_minus_init_s']:.2f} s "
                f"(goal <= 2 s); same metrics: {numbers['same_metrics']}"
            )
            print(
                f"ray.shutdown() of a local instance with {opts.jobs} actors: as Ray does"
                f" it {numbers['ray_shutdown_as_ray_s']:.2f} s, as the backend does"
                f" (helpers SIGKILLed first) {numbers['ray_shutdown_as_backend_s']:.2f} s"
            )
            print(
                f"ablagen run to its first run's start: pool started once the runs are "
                f"planned {numbers['first_run_starts_late_pool_s']:.2f} s, at once "
                f"{numbers['first_run_starts_early_pool_s']:.2f} s; same metrics: "
                f"{numbers['early_pool_same_metrics']}"
            )
            if opts.json:
                opts.json.write_text(json.dumps(numbers, indent=2) + "\n")
            return
        naive_wall, naive_results = run_naive(
            study, opts.epochs, Path(tmp) / "naive", opts.naive_threads
        )
        orch_wall, orch_results = run_orchestrator(study, opts.epochs, opts.jobs)

    naive_train, orch_train = train_time(naive_results), train_time(orch_results)
    diffs = [
        abs(
            float(value)
            - float(orch_results.get(v, {}).get("final", {}).get(k, float("nan")))
        )
        for v, result in naive_results.items()
        for k, value in (result.get("final") or {}).items()
    ]
    max_diff = max(diffs, default=0.0)
    same = max_diff == 0.0
    numbers = {
        "study": source,
        "variants": n,
        "epochs": opts.epochs,
        "jobs": opts.jobs,
        "naive_threads": opts.naive_threads,
        "naive_wall_s": round(naive_wall, 2),
        "orchestrator_wall_s": round(orch_wall, 2),
        "speedup": round(naive_wall / orch_wall, 2),
        "naive_train_s": round(naive_train, 2),
        "orchestrator_train_s": round(orch_train, 2),
        "naive_overhead_per_variant_s": round((naive_wall - naive_train) / n, 3),
        "orchestrator_overhead_per_variant_s": round(
            (orch_wall * opts.jobs - orch_train) / n, 3
        ),
        "same_metrics": same,
        "max_final_metric_diff": max_diff,
    }
    print(f"study: {source} ({n} variants, --epochs {opts.epochs})")
    print(
        f"naive loop       {naive_wall:7.2f} s   training {naive_train:6.2f} s   "
        f"overhead/variant {numbers['naive_overhead_per_variant_s']:.3f} s"
    )
    print(
        f"ablagen --jobs {opts.jobs} {orch_wall:7.2f} s   training {orch_train:6.2f} s   "
        f"overhead/variant {numbers['orchestrator_overhead_per_variant_s']:.3f} s (process-seconds)"
    )
    print(f"speedup {numbers['speedup']:.2f}x (goal >= 3x)")
    print(
        "final metrics: "
        + (
            "identical"
            if same
            else f"max |difference| {max_diff:.3g} (the loop's scripts use "
            "every core, each worker cores/jobs threads: float sums differ in the last bits)"
        )
    )
    if opts.json:
        opts.json.write_text(json.dumps(numbers, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
