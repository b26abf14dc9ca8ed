"""The Ray backend on a real local Ray instance (one per module: it takes seconds)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from conftest_orchestrate import (
    TINY_TORCH,
    make_study,
    run_collecting,
    script_name,
    write_manifest,
)

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
    summary, ran = run_collecting(
        study,
        RunOptions(
            backend="ray",
            timeout_s=3,
            cpus_per_run=1,
            seeds=(0, 1),
            only=("baseline", "a:zero", "b:zero", "c:zero", "d:zero"),
        ),
    )
    got = {(r.variant_id, r.seed): r.status for r in ran}
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
    assert again.ran == 0 and again.skipped_ok == 2 and len(again.skipped_failed) == 8


KILL_ACTOR = '''"""Kills the warm Ray actor it runs under (run -> worker -> zygote -> actor)."""
import os
import sys

pid = os.getpid()
for _ in range(3):
    with open(f"/proc/{pid}/stat") as fh:
        pid = int(fh.read().rsplit(")", 1)[1].split()[1])
with open(f"/proc/{pid}/cmdline", "rb") as fh:
    if b"ray::" not in fh.read():
        sys.exit(5)  # not the actor: the process tree is not what this test expects
os.kill(pid, 9)
'''
WARM_PROBE = 'import sys\n\nprint("warm:", "torch" in sys.modules)\n'


@pytest.mark.slow
def test_warm_actors_run_a_study_with_a_crash_a_timeout_and_a_dead_actor(
    tmp_path: Path, capfd
) -> None:
    """One warm slot runs every run in order: a torch baseline (preloaded torch,
    metrics equal to the local backend's), an abort, a timeout, an oom at --max-memory,
    a run that kills its own actor (recorded, the actor replaced) and a run after it."""
    study = make_study(
        tmp_path / "study",
        {
            "a:zero": "abort",
            "b:zero": ("hang", 0),
            "m:zero": "oom",
            "k:zero": "ok",
            "z:zero": "ok",
        },
    )
    (study / "baseline.py").write_text(WARM_PROBE + TINY_TORCH.read_text())
    (study / script_name("k:zero")).write_text(KILL_ACTOR)
    variants = ["baseline", "a:zero", "b:zero", "m:zero", "k:zero", "z:zero"]
    write_manifest(study, variants)
    options = dict(jobs=1, timeout_s=6, max_memory_gb=1.0, only=tuple(variants))
    _, ran = run_collecting(study, RunOptions(backend="ray", cpus_per_run=1, **options))
    assert "warning" not in capfd.readouterr().err  # no fallback: warm actors
    got = {r.variant_id: r.status for r in ran}
    assert got == {
        "baseline": "ok",
        "a:zero": "crashed",
        "b:zero": "timeout",
        "m:zero": "oom",
        "k:zero": "crashed",
        "z:zero": "ok",  # on the fresh actor that replaced the dead one
    }
    with ResultStore(study, readonly=True) as store:
        records = {r.variant_id: r for r in store.records()}
    assert "warm: True" in (study / records["baseline"].log_path).read_text()
    assert records["a:zero"].error_tail.endswith("killed by SIGABRT")
    # the wall time it was killed at: 6 s and what a loaded machine adds
    assert re.search(r"killed after the 6\.\d s timeout$", records["b:zero"].error_tail)
    assert "over the 1.00 GB limit (--max-memory)" in records["m:zero"].error_tail
    assert "ActorDiedError" in records["k:zero"].error_tail
    assert records["z:zero"].result["final"]["val_acc"] == pytest.approx(0.5062)

    # the same baseline on the local pool, one worker of one thread: same metrics
    local = make_study(tmp_path / "local", {})
    (local / "baseline.py").write_text((study / "baseline.py").read_text())
    write_manifest(local, ["baseline"])
    run_study(local, RunOptions(jobs=1, preload=("torch",), only=("baseline",)))
    with ResultStore(local, readonly=True) as store:
        (ref,) = store.records()
    assert ref.status == "ok"
    assert records["baseline"].result["history"] == ref.result["history"]
    assert records["baseline"].result["final"] == ref.result["final"]


def test_no_warm_worker_falls_back_to_fresh_processes_with_one_warning(
    tmp_path: Path, monkeypatch, capfd
) -> None:
    from ablagen.orchestrate import ray_warm

    broken = tmp_path / "worker.py"
    broken.write_text('import sys\n\nsys.exit("ablagen worker: cannot start here")\n')
    monkeypatch.setattr(ray_warm, "WORKER", broken)
    study = make_study(tmp_path / "study", {"baseline": "ok", "a:zero": "raise"})
    _, ran = run_collecting(study, RunOptions(backend="ray", cpus_per_run=1, jobs=2))
    assert {r.variant_id: r.status for r in ran} == {
        "baseline": "ok",
        "a:zero": "failed",
    }
    warnings = [l for l in capfd.readouterr().err.splitlines() if "warning" in l]
    assert warnings == [
        "warning: Ray cannot start warm workers (the warm worker ended before it"
        " was ready ablagen worker: cannot start here); each run starts a fresh"
        " python process"
    ]
