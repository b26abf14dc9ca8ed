"""The Ray backend on a multi-node cluster whose worker nodes cannot see the study
(:mod:`ray_cluster`): data, scripts, checkpoints and results travel through Ray and
``--storage``. Each study's results equal the local backend's; a node lost in the
middle of a study loses no run and records none twice.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ray_cluster import ClusterUnavailable, RayCluster, lose_a_node, start_cluster
from scriptutil import generate

from ablagen.core.studydir import RESULTS_DB
from ablagen.generate.context import TrainConfig
from ablagen.orchestrate import ResultStore

pytest.importorskip("ray")
pytest.importorskip("fsspec")
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def cluster():
    try:
        with start_cluster() as started:
            yield started
    except ClusterUnavailable as exc:
        pytest.skip(str(exc))


def write_digits(root: Path, count: int = 100) -> Path:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images[:count], digits.target)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")
    return root


def write_text(path: Path) -> Path:
    words = "the cat sat on a mat and a dog ran to the red hat".split()
    rng = np.random.default_rng(0)
    lines = (" ".join(rng.choice(words, 10)) + "." for _ in range(60))
    path.write_text("\n".join(lines))
    return path


def ablagen(cluster: RayCluster, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ablagen", *argv],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def outcomes(study: Path) -> dict[tuple[str, int], tuple[str, dict | None]]:
    with ResultStore(study, readonly=True) as store:
        return {
            (r.variant_id, r.seed): (r.status, r.result and r.result.get("final"))
            for r in store.records()
        }


def on_both_backends(cluster: RayCluster, study: Path, *argv: str) -> None:
    """Run ``study`` on the cluster and a copy of it locally: the same outcomes."""
    local = study.with_name(study.name + "-local")
    shutil.copytree(study, local)
    on_ray = ablagen(
        cluster, "run", str(study), "--backend", "ray", "--ray-address",
        cluster.address, "--quiet", *argv,
    )  # fmt: skip
    assert on_ray.returncode == 0, on_ray.stdout + on_ray.stderr
    on_local = ablagen(cluster, "run", str(local), "--jobs", "2", "--quiet", *argv)
    assert on_local.returncode == 0, on_local.stdout + on_local.stderr
    got, want = outcomes(study), outcomes(local)
    assert got and all(status == "ok" for status, _ in got.values())
    assert got == want


def test_folder_data_travels_to_nodes_that_cannot_see_the_study(cluster) -> None:
    """A retrain study on folder: data outside the study (its path starts with ..)."""
    digits = write_digits(cluster.hidden / "data" / "digits")
    study = generate(
        EXAMPLES / "folder_cnn.py",
        cluster.hidden / "folder",
        dataset=f"folder:{digits}",
        components=("conv2",),
        num_workers=0,
    )
    on_both_backends(cluster, study, "--seeds", "0")


def test_knockout_study_on_the_cluster(cluster) -> None:
    study = generate(
        EXAMPLES / "digits_cnn.py",
        cluster.hidden / "knockout",
        mode="knockout",
        kinds="layers",
        dataset="synthetic",
    )
    on_both_backends(cluster, study, "--seeds", "0")


def test_text_lm_study_on_the_cluster(cluster) -> None:
    corpus = write_text(cluster.hidden / "corpus.txt")
    study = generate(
        EXAMPLES / "char_lm.py",
        cluster.hidden / "lm",
        dataset=f"text:{corpus}",
        components=("head",),
        train=TrainConfig(epochs=1, task="lm"),
    )
    on_both_backends(cluster, study, "--seeds", "0")


def test_a_lost_node_s_runs_resume_on_the_other_from_storage(cluster) -> None:
    """Node w1 is SIGKILLed (its raylet, then the rest of it) once one of its runs
    has saved a checkpoint. Its run resumes on w2 from the checkpoint in --storage;
    every run is recorded once, ok, with the metrics of an uninterrupted local run."""
    digits = write_digits(cluster.hidden / "data" / "digits300", count=300)
    study = generate(
        EXAMPLES / "folder_cnn.py",
        cluster.hidden / "lost",
        dataset=f"folder:{digits}",
        components=("conv2",),
        num_workers=0,
        train=TrainConfig(epochs=30),  # seconds a run: killed between saves
    )
    local = study.with_name("lost-local")  # the same ../data path
    shutil.copytree(study, local)
    storage = cluster.root / "storage"  # every node reaches it; not the study
    try:
        lost = lose_a_node(
            cluster,
            [str(study), "--backend", "ray", "--ray-address", cluster.address,
             "--storage", str(storage), "--seeds", "0,1"],
            storage=storage,
        )  # fmt: skip
    finally:
        cluster.restart("w1")  # for the other tests, in any order
    assert lost.kill_at_s > 0, f"no run of w1 saved a checkpoint: {lost.output}"
    assert lost.returncode == 0, lost.output
    conn = sqlite3.connect(study / RESULTS_DB)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        counts = conn.execute(
            "SELECT variant_id, seed, COUNT(*) FROM runs GROUP BY variant_id, seed"
        ).fetchall()
    finally:
        conn.close()
    assert sorted(counts) == [
        (v, s, 1) for v in ("baseline", "conv2:zero") for s in (0, 1)
    ]
    logs = [p.read_text() for p in (study / "logs").glob("*.log")]
    assert any("resumed" in log for log in logs), "no run resumed from its checkpoint"
    # storage mirrors the study: the finished runs' checkpoints are gone
    assert (
        not list(storage.rglob("*.pt"))
        and len(list(storage.rglob("*.result.json"))) == 4
    )
    on_local = ablagen(
        cluster, "run", str(local), "--jobs", "2", "--seeds", "0,1", "--quiet"
    )
    assert on_local.returncode == 0, on_local.stdout + on_local.stderr
    assert outcomes(study) == outcomes(local)


def test_files_the_model_files_build_data_opens_travel_to_the_nodes(cluster) -> None:
    """build_data() reads x.npy by its absolute path and y.csv relative to the
    study: neither exists on the nodes, both are shipped and found there."""
    from test_orchestrate_ray_storage import own_data_model

    proj = cluster.hidden / "proj"
    model = own_data_model(proj)
    study = generate(model, proj / "study", components=("fc1",))
    on_both_backends(cluster, study, "--seeds", "0")
