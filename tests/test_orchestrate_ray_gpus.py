"""Ray's --gpus-per-run on a local Ray instance that declares one GPU: a fraction
reaches Ray's resource request (num_gpus of the warm actors), Ray schedules the runs
on that GPU and every run sees it through CUDA_VISIBLE_DEVICES. Ray counts the GPUs
it is told of, so this runs on CPU; the scripts never touch CUDA."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest_orchestrate import write_manifest

from ablagen.orchestrate import ResultStore, RunOptions, run_study

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]

#: a contract-following script that reports the GPU Ray showed it
SCRIPT = """
import argparse, json, os

parser = argparse.ArgumentParser()
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--device", default="cpu")
parser.add_argument("--out", default=None)
args = parser.parse_args()
result = {
    "schema": 1, "variant": VARIANT, "status": "ok", "seed": args.seed,
    "final": {"val_acc": 0.5},
    "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
}
with open(args.out, "w") as fh:
    json.dump(result, fh)
"""


@pytest.fixture(scope="module", autouse=True)
def local_ray_with_one_gpu():
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=1,  # declared: Ray hands out shares of it whether or not it exists
        include_dashboard=False,
        logging_level=logging.ERROR,
        log_to_driver=False,
    )
    yield
    ray.shutdown()


def test_a_fraction_of_a_gpu_reaches_rays_resource_request(tmp_path: Path, monkeypatch):
    study = tmp_path / "study"
    study.mkdir()
    ids = ["baseline", "a:zero", "b:zero", "c:zero"]
    for vid in ids:
        (study / f"{vid.replace(':', '__')}.py").write_text(
            f"VARIANT = {vid!r}\n" + SCRIPT
        )
    write_manifest(study, ids)
    requests = []
    real_remote = ray.remote

    def remote(*args, **kwargs):  # what ray_backend asks Ray for
        requests.append(kwargs)
        return real_remote(*args, **kwargs)

    monkeypatch.setattr(ray, "remote", remote)
    options = RunOptions(backend="ray", cpus_per_run=1, gpus_per_run=0.5, seeds=(0,))
    summary = run_study(study, options)
    assert requests and all(r["num_gpus"] == 0.5 for r in requests), requests
    assert summary.all_ok and summary.jobs == 2  # two CPUs; two halves of one GPU
    with ResultStore(study, readonly=True) as store:
        seen = [r.result["cuda_visible_devices"] for r in store.records(status="ok")]
    assert sorted(seen) == ["0"] * 4  # Ray gave every run a share of GPU 0
