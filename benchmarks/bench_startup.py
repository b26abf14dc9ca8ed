"""A generated script's start-up cost, against a bare ``import torch``, side by side.

For each round, in one run: a bare ``python -c "import torch"`` process; the committed
digits baseline (``generated/digits_cnn/baseline.py --epochs 1``), which ends with a
plain ``sys.exit(main())``; the same script calling ``gc.freeze()`` before it exits
(as scripts did before issue #29 took it out as ceremony: the interpreter's last
garbage collection then skips every object torch, sympy and scipy left); and the
script with the seeding it had before (``torch.use_deterministic_algorithms(True)``,
which imports torch's compiler stack). Overhead = the script's wall time as a process,
minus its own ``wall_time_s``, minus the bare import. Best of ``--rounds``.

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
EXIT = "    sys.exit(main())\n"
FREEZE = "    code = main()\n    gc.freeze()\n    sys.exit(code)\n"


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


def variant(text: str, old: str, new: str, what: str) -> str:
    changed = text.replace(old, new, 1)
    assert changed != text, f"{what} changed in the script: update the benchmark"
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    names = ("now", "frozen exit", "old seeding")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "generated" / "digits_cnn"
        folder.mkdir(parents=True)
        (Path(tmp) / "examples").symlink_to(ROOT / "examples")
        text = SCRIPT.read_text()
        frozen = variant(text, EXIT, FREEZE, "the exit")
        frozen = variant(frozen, "import json\n", "import gc\nimport json\n", "imports")
        old = variant(text, "    torch.manual_seed(seed)\n", OLD_SEEDING, "seeding")
        scripts = {}
        for name, body in zip(names, (text, frozen, old)):
            scripts[name] = folder / f"{name.replace(' ', '_').replace(',', '')}.py"
            scripts[name].write_text(body)
        rows: dict[str, list[tuple[float, float]]] = {"bare": []}
        rows.update((name, []) for name in names)
        finals = {}
        for _ in range(args.rounds):
            rows["bare"].append(
                (timed([sys.executable, "-c", "import torch"], folder), 0.0)
            )
            for name in names:
                out = Path(tmp) / f"{scripts[name].stem}.json"
                rows[name].append(script_run(scripts[name], out))
                finals[name] = json.loads(out.read_text())["final"]
    bare = min(wall for wall, _ in rows["bare"])
    print(f"bare `import torch` process: {bare:.2f} s (best of {args.rounds})")
    print("| script | process wall | own work | overhead beyond torch import |")
    print("|---|---:|---:|---:|")
    overhead = {}
    for name in names:
        wall, own = min(rows[name], key=lambda row: row[0] - row[1])
        overhead[name] = wall - own - bare
        print(f"| {name} | {wall:.2f} s | {own:.2f} s | {overhead[name]:.2f} s |")
    print(
        f"exit a gc.freeze() would save: {overhead['now'] - overhead['frozen exit']:.2f}"
        f" s; seeding saved: {overhead['old seeding'] - overhead['now']:.2f} s"
    )
    same = all(final == finals["now"] for final in finals.values())
    print(f"final metrics identical: {same}")


if __name__ == "__main__":
    main()
