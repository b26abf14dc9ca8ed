"""A generated script's start-up cost, against a bare ``import torch``, side by side.

For each round, in one run: a bare ``python -c "import torch"`` process; the committed
digits baseline (``generated/digits_cnn/baseline.py --epochs 1``); and the same script
with the seeding it had before (``torch.use_deterministic_algorithms(True)``, which
imports torch's compiler stack). Overhead = the script's wall time as a process, minus
its own ``wall_time_s``, minus the bare import. Best of ``--rounds``.

    python benchmarks/bench_startup.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "generated" / "digits_cnn" / "baseline.py"
OLD_SEEDING = (
    "    torch.manual_seed(seed)\n    torch.use_deterministic_algorithms(True)\n"
)


def timed(command: list[str], cwd: Path) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def script_run(script: Path, out: Path) -> tuple[float, float]:
    """(process wall time, the script's own wall_time_s)."""
    wall = timed(
        [sys.executable, script.name, "--epochs", "1", "--out", str(out)], script.parent
    )
    return wall, json.loads(out.read_text())["wall_time_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "generated" / "digits_cnn"
        folder.mkdir(parents=True)
        (Path(tmp) / "examples").symlink_to(ROOT / "examples")
        now = folder / "baseline.py"
        now.write_text(SCRIPT.read_text())
        before = folder / "baseline_old_seeding.py"
        text = SCRIPT.read_text().replace(
            "    torch.manual_seed(seed)\n", OLD_SEEDING, 1
        )
        assert (
            text != SCRIPT.read_text()
        ), "seed_everything changed: update the benchmark"
        before.write_text(text)
        rows: dict[str, list[tuple[float, float]]] = {
            "bare": [],
            "now": [],
            "before": [],
        }
        for _ in range(args.rounds):
            rows["bare"].append(
                (timed([sys.executable, "-c", "import torch"], folder), 0.0)
            )
            rows["now"].append(script_run(now, Path(tmp) / "now.json"))
            rows["before"].append(script_run(before, Path(tmp) / "before.json"))
        same = (
            json.loads((Path(tmp) / "now.json").read_text())["final"]
            == json.loads((Path(tmp) / "before.json").read_text())["final"]
        )
    bare = min(wall for wall, _ in rows["bare"])
    print(f"bare `import torch` process: {bare:.2f} s (best of {args.rounds})")
    print("| script | process wall | own work | overhead beyond torch import |")
    print("|---|---:|---:|---:|")
    for name in ("now", "before"):
        wall, own = min(rows[name])
        print(f"| {name} | {wall:.2f} s | {own:.2f} s | {wall - own - bare:.2f} s |")
    print(f"final metrics identical: {same}")


if __name__ == "__main__":
    main()
