"""Node loss on a Ray cluster: the same study with and without a node SIGKILLed.

Starts the test cluster of ``tests/ray_cluster.py`` (a head and two worker nodes of
one CPU each that cannot see the study; needs root and ``unshare``), generates a
folder:-data retrain study (``examples/folder_cnn.py``, 300 images, 30 epochs, two
scripts x two seeds), runs it once uninterrupted and once while node w1 is
SIGKILLed (its raylet, then the rest of it) as soon as one of its runs has saved a
checkpoint, with ``--storage`` a folder outside the study, and reports, side by
side: wall times, when the kill came, runs lost, runs recorded twice, runs resumed
from a checkpoint, ``PRAGMA integrity_check`` and whether every final metric equals
the uninterrupted study's::

    python benchmarks/bench_ray_cluster.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from ray_cluster import lose_a_node, start_cluster  # noqa: E402
from scriptutil import generate  # noqa: E402
from test_orchestrate_ray_cluster import EXAMPLES, outcomes, write_digits  # noqa: E402

from ablagen.core.studydir import RESULTS_DB  # noqa: E402
from ablagen.generate.context import TrainConfig  # noqa: E402

SEEDS = (0, 1)


def rows(study: Path) -> tuple[str, list[tuple[str, int, int]]]:
    conn = sqlite3.connect(study / RESULTS_DB)
    try:
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        counts = conn.execute(
            "SELECT variant_id, seed, COUNT(*) FROM runs GROUP BY variant_id, seed"
        ).fetchall()
    finally:
        conn.close()
    return check, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    opts = parser.parse_args()
    with start_cluster() as cluster:
        digits = write_digits(cluster.hidden / "data" / "digits", count=300)
        study = generate(
            EXAMPLES / "folder_cnn.py",
            cluster.hidden / "lost",
            dataset=f"folder:{digits}",
            components=("conv2",),
            num_workers=0,
            train=TrainConfig(epochs=30),  # seconds a run: killed between saves
        )
        calm = study.with_name("calm")
        shutil.copytree(study, calm)
        seeds = ",".join(map(str, SEEDS))

        def argv(where: Path, storage: str) -> list[str]:
            return [str(where), "--backend", "ray", "--ray-address", cluster.address,
                    "--storage", str(cluster.root / storage), "--seeds", seeds]  # fmt: skip

        start = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "ablagen", "run", *argv(calm, "calm-storage")],
            env=cluster.env,
            capture_output=True,
            text=True,
        )
        calm_wall = time.monotonic() - start
        assert done.returncode == 0, done.stdout + done.stderr
        lost = lose_a_node(
            cluster, argv(study, "storage"), storage=cluster.root / "storage"
        )
        check, counts = rows(study)
        planned = 2 * len(SEEDS)
        logs = [p.read_text() for p in (study / "logs").glob("*.log")]
        numbers = {
            "runs": planned,
            "uninterrupted_wall_s": round(calm_wall, 1),
            "node_loss_wall_s": round(lost.wall_s, 1),
            "kill_at_s": round(lost.kill_at_s, 1),
            "exit_code": lost.returncode,
            "runs_lost": planned - len(counts),
            "runs_recorded_twice": sum(1 for *_, n in counts if n > 1),
            "runs_resumed": sum("resumed" in log for log in logs),
            "integrity_check": check,
            "same_metrics": outcomes(study) == outcomes(calm),
        }
    for name, value in numbers.items():
        print(f"{name}: {value}")
    if opts.json:
        opts.json.write_text(json.dumps(numbers, indent=2) + "\n")


if __name__ == "__main__":
    main()
