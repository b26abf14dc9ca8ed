"""Code-generation throughput: sectioned, cached formatting versus formatting every file.

Generates one script per output unit of a 1,000-unit layer (benchmarks/wide_mlp.py,
1,011 scripts with the baseline and the head's units), times it end to end (model load,
tracing, rendering, formatting, atomic write), then times the naive approach (black on
each whole rendered script) on a sample of the same scripts, and finally checks that
every generated file passes ``black --check``.

Then times ``ablagen generate`` through the CLI, start-up included, with black by
shape (generate/by_shape.py) and without, side by side.

    python benchmarks/bench_generate.py [--sample 40] [--quick] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import black

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from ablagen.generate.render import BLACK_MODE  # noqa: E402
from ablagen.generate.build import GenerateOptions, generate_study  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=1000)
    parser.add_argument(
        "--sample", type=int, default=40, help="scripts the naive formatter is timed on"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="200 units, 10 naive samples, check a sample only",
    )
    parser.add_argument("--rounds", type=int, default=2, help="CLI timings per setting")
    args = parser.parse_args()
    units, sample = (200, 10) if args.quick else (args.units, args.sample)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "wide"
        opts = GenerateOptions(
            model=str(HERE / "wide_mlp.py"),
            out=out,
            kinds="neurons",
            neuron_groups=units,
        )
        start = time.perf_counter()
        study = generate_study(opts)
        ours = time.perf_counter() - start
        count = len(study.manifest.variants)
        scripts = sorted(out.glob("*.py"))
        # naive: black over each whole file (the text is already formatted, black's work is the same)
        picked = scripts[:: max(1, len(scripts) // sample)][:sample]
        texts = [p.read_text() for p in picked]
        start = time.perf_counter()
        for text in texts:
            black.format_str(text, mode=BLACK_MODE)
        naive = (time.perf_counter() - start) / len(texts)
        checked = scripts if not args.quick else picked
        check = subprocess.run(
            [sys.executable, "-m", "black", "--check", "-q", *map(str, checked)],
            capture_output=True,
            text=True,
        )
    rate, naive_rate = count / ours, 1 / naive
    print("| approach | scripts | seconds | scripts/s |")
    print("|---|---:|---:|---:|")
    print(
        f"| ablagen generate (sectioned, cached black) | {count} | {ours:.2f} | {rate:.0f} |"
    )
    print(
        f"| naive: black on every whole file (timed on {len(texts)}) | {count} | {count * naive:.1f} (est.) | {naive_rate:.1f} |"
    )
    print(f"\nspeed-up {rate / naive_rate:.0f}x; black --check on {len(checked)} files: "
          f"{'all pass' if check.returncode == 0 else 'FAILED'}")  # fmt: skip
    if check.returncode != 0:
        print(check.stdout + check.stderr)
        sys.exit(1)
    cli(units, args.rounds)


def cli(units: int, rounds: int) -> None:
    """``ablagen generate`` through the CLI, start-up included, black by shape on and
    off (ABLAGEN_FORMAT_BY_SHAPE), alternated ``rounds`` times: the best of each."""
    best = {"1": float("inf"), "0": float("inf")}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for flag in best:
                out = Path(tmp) / f"cli{flag}"
                command = [sys.executable, "-m", "ablagen", "generate"]
                command += [f"{HERE / 'wide_mlp.py'}", "--out", str(out), "--force"]
                command += ["--kinds", "neurons", "--neuron-groups", str(units)]
                env = dict(os.environ, ABLAGEN_FORMAT_BY_SHAPE=flag)
                start = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True, env=env)
                best[flag] = min(best[flag], time.perf_counter() - start)
        count = len(list((Path(tmp) / "cli1").glob("*.py")))
        same = all(
            (Path(tmp) / "cli0" / p.name).read_bytes() == p.read_bytes()
            for p in (Path(tmp) / "cli1").glob("*.py")
        )
    print(f"\nthrough the CLI, start-up included ({count} scripts, best of {rounds}):")
    print("| black | seconds | scripts/s |")
    print("|---|---:|---:|")
    for flag, name in (("0", "every section"), ("1", "by shape")):
        print(f"| {name} | {best[flag]:.2f} | {count / best[flag]:.0f} |")
    print(f"by shape / every section: {best['0'] / best['1']:.2f}x; identical bytes: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
