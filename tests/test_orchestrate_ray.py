"""The Ray backend on a real local Ray instance (one per module: it takes seconds)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest_orchestrate import make_study

from ablagen.orchestrate import ResultStore, RunOptions, run_study

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.ERROR,
        log_to_driver=False,
    )
    yield
    ray.shutdown()


def test_ray_runs_record_every_outcome_into_the_store(tmp_path: Path) -> None:
    study = make_study(
        tmp_path / "study",
        {
            "baseline": "ok",
            "a:zero": "raise",
            "b:zero": ("hang", 0),
            "c:zero": "nan",
            "d:zero": "abort",
        },
    )
    summary = run_study(
        study,
        RunOptions(
            backend="ray",
            timeout_s=3,
            cpus_per_run=1,
            seeds=(0, 1),
            only=("baseline", "a:zero", "b:zero", "c:zero", "d:zero"),
        ),
    )
    got = {(r.variant_id, r.seed): r.status for r in summary.ran}
    expected = {
        "baseline": "ok",
        "a:zero": "failed",
        "b:zero": "timeout",
        "c:zero": "diverged",
        "d:zero": "crashed",
    }
    assert got == {(v, s): status for v, status in expected.items() for s in (0, 1)}
    assert summary.jobs == 2  # two CPUs, one per run
    with ResultStore(study, readonly=True) as store:
        records = {(r.variant_id, r.seed): r for r in store.records()}
        assert [(r.variant_id, r.seed) for r in store.latest_ok()] == [
            ("baseline", 0),
            ("baseline", 1),
        ]
    ok = records[("baseline", 1)]
    assert ok.result["final"]["val_acc"] == pytest.approx(0.5182) and ok.extra == {
        "backend": "ray"
    }
    # the log came back to the driver
    assert "training baseline seed=1" in (study / ok.log_path).read_text()
    assert "RuntimeError: boom in a:zero" in records[("a:zero", 0)].error_tail
    assert records[("d:zero", 0)].error_tail.endswith("killed by SIGABRT")

    # resume: nothing to do
    again = run_study(study, RunOptions(backend="ray", seeds=(0, 1)))
    assert again.ran == () and again.skipped_ok == 2 and len(again.skipped_failed) == 8
