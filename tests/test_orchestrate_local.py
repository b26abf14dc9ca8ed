"""The local backend with real processes: faults as data, resume, equality with python."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest_orchestrate import (
    counter,
    fake_script,
    make_study,
    make_torch_study,
    run_collecting,
    script_name,
    write_manifest,
)

from ablagen.core.errors import StudyError
from ablagen.orchestrate import Progress, ResultStore, RunOptions, run_study
from ablagen.orchestrate.local import preload_modules

pytestmark = pytest.mark.timeout(120)

#: the fake scripts import no torch: skip preloading it (the CLI and kill tests keep the default)
LIGHT = {"preload": ()}

FAULTS = {
    "baseline": ("ok", 0.2),
    "raise:zero": "raise",
    "abort:zero": "abort",
    "segv:zero": "segv",
    "exit:zero": "exit",
    "hang:zero": "hang",
    "nan:zero": "nan",
    "diverge:zero": "diverge",
    "garbage:zero": "garbage",
    "ok:zero": ("ok", 0.2),
}
EXPECTED = {
    "baseline": ("ok", 0),
    "raise:zero": ("failed", 1),
    "abort:zero": ("crashed", -6),
    "segv:zero": ("crashed", -11),
    "exit:zero": ("failed", 7),
    "hang:zero": ("timeout", -9),
    "nan:zero": ("diverged", 0),
    "diverge:zero": ("diverged", 3),
    "garbage:zero": ("failed", 0),
    "ok:zero": ("ok", 0),
}


@pytest.fixture(scope="module")
def faults(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, object, list[Progress]]:
    """One study with every kind of fault, run once (2 jobs, 1.5 s timeout)."""
    study = make_study(tmp_path_factory.mktemp("faults") / "study", FAULTS)
    events: list[Progress] = []
    summary = run_study(
        study, RunOptions(jobs=2, timeout_s=1.5, **LIGHT), progress=events.append
    )
    return study, summary, events


def test_every_fault_is_recorded_and_the_study_goes_on(faults) -> None:
    study, summary, events = faults
    ran = [e.record for e in events if e.event == "finished"]
    assert {r.variant_id: (r.status, r.exit_code) for r in ran} == EXPECTED
    # the summary counts every run and keeps the records of the failed ones only
    assert (summary.ran, summary.ran_ok) == (len(FAULTS), 2)
    assert summary.ran_failed == tuple(r for r in ran if not r.ok)
    assert not summary.all_ok and {r.variant_id for r in summary.failures} == set(
        EXPECTED
    ) - {"baseline", "ok:zero"}
    with ResultStore(study, readonly=True) as store:
        stored = {r.variant_id: r for r in store.records()}
    assert {v: (r.status, r.exit_code) for v, r in stored.items()} == EXPECTED
    assert "RuntimeError: boom in raise:zero" in stored["raise:zero"].error_tail
    # a traceback like python's
    assert "<frozen runpy>" not in stored["raise:zero"].error_tail
    assert stored["abort:zero"].error_tail.endswith("killed by SIGABRT")
    assert (
        stored["hang:zero"].error_tail.endswith("timeout")
        and stored["hang:zero"].wall_time_s < 5
    )
    assert "this is not json" in stored["garbage:zero"].error_tail
    assert "not finite" in stored["nan:zero"].error_tail
    ok = stored["baseline"]
    assert ok.error_tail is None and ok.result["final"]["val_acc"] == pytest.approx(
        0.5082
    )
    for (
        rec
    ) in stored.values():  # one log per run, named after the script, seed and args
        log = study / rec.log_path
        assert log.name.startswith(Path(script_name(rec.variant_id)).stem + "__seed0__")
        assert f"training {rec.variant_id} seed=0" in log.read_text()


def test_progress_events(faults) -> None:
    _, summary, events = faults
    kinds = [e.event for e in events]
    assert (
        kinds[0] == "start"
        and kinds[-1] == "end"
        and kinds.count("finished") == len(FAULTS)
    )
    assert max(e.running for e in events) == 2  # two jobs at once, never more
    last = [e for e in events if e.event == "finished"][-1]
    assert (last.done, last.failed, last.total) == (len(FAULTS), 8, len(FAULTS))
    assert events[-1].summary is summary


def test_resume_skips_ok_and_failed_retry_reruns_failed(tmp_path: Path) -> None:
    study = make_study(
        tmp_path / "s", {"baseline": "ok", "a:zero": "raise", "b:zero": "ok"}
    )
    first = run_study(study, RunOptions(jobs=2, seeds=(0, 1), **LIGHT))
    assert first.ran == 6 and first.ran_ok == 4 and len(first.failures) == 2
    before = counter(study)
    again = run_study(study, RunOptions(jobs=2, seeds=(0, 1), **LIGHT))
    assert again.ran == 0 and again.skipped_ok == 4 and len(again.skipped_failed) == 2
    # nothing ran, failures still reported
    assert not again.all_ok and counter(study) == before
    retried, ran = run_collecting(
        study, RunOptions(jobs=2, seeds=(0,), retry_failed=True, **LIGHT)
    )
    assert [(r.variant_id, r.status, r.attempts) for r in ran] == [
        ("a:zero", "failed", 2)
    ]
    assert retried.ran == 1 and retried.ran_failed == tuple(ran)
    # the failing script is regenerated (new hash): it runs again, without --retry-failed
    (study / script_name("a:zero")).write_text(fake_script("a:zero", "ok"))
    write_manifest(study, ["baseline", "a:zero", "b:zero"])
    fixed, ran = run_collecting(
        study, RunOptions(jobs=2, seeds=(0, 1), only=("a:zero", "baseline"), **LIGHT)
    )
    assert sorted((r.variant_id, r.seed, r.status) for r in ran) == [
        ("a:zero", 0, "ok"),
        ("a:zero", 1, "ok"),
    ]
    assert fixed.all_ok and fixed.skipped_ok == 2
    with ResultStore(study, readonly=True) as store:
        latest = store.latest_ok()
        assert [(r.variant_id, r.seed) for r in latest] == [
            ("baseline", 0),
            ("baseline", 1),
            ("a:zero", 0),
            ("a:zero", 1),
            ("b:zero", 0),
            ("b:zero", 1),
        ]
        assert store.counts()["running"] == 0


def test_local_pool_equals_python_script(tmp_path: Path) -> None:
    """A tiny torch training run gives the very same numbers as `python script.py`,
    here for a run in a worker that already ran (and learned from) another one."""
    study = make_torch_study(tmp_path / "torch")
    out = tmp_path / "reference.json"
    argv = [
        sys.executable,
        "baseline.py",
        "--seed",
        "1",
        "--device",
        "cpu",
        "--epochs",
        "2",
        "--out",
        str(out),
    ]
    reference = subprocess.Popen(argv, cwd=study, stdout=subprocess.DEVNULL)
    summary, ran = run_collecting(study, RunOptions(jobs=1, seeds=(0, 1), epochs=2))
    assert summary.all_ok and [r.seed for r in ran] == [0, 1]
    assert reference.wait() == 0
    ref, rec = json.loads(out.read_text()), ran[1]
    for key in ("history", "final", "weights_sum", "params_total"):
        assert rec.result[key] == ref[key], key
    # another seed, other numbers
    assert ran[0].result["final"] != rec.result["final"]
    assert "epoch 2: val_loss" in (study / rec.log_path).read_text()


def test_changed_script_is_refused(tmp_path: Path) -> None:
    study = make_study(tmp_path / "s", {"baseline": "ok"})
    (study / "baseline.py").write_text(fake_script("baseline", "raise"))
    with pytest.raises(StudyError, match="changed since it was generated"):
        run_study(study, RunOptions(jobs=1))


def test_preload_lists_installed_top_level_imports(tmp_path: Path) -> None:
    (tmp_path / "helper.py").write_text("")
    script = tmp_path / "s.py"
    script.write_text(
        "import json\nimport helper\nfrom torch import nn\nimport no_such_module_xyz\n"
        "def f():\n    import email\n"
    )
    mods = preload_modules([script])
    assert mods[:2] == ["torch", "torch._dynamo"] and "json" in mods
    assert not {"helper", "no_such_module_xyz", "email"} & set(mods)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the warm pool forks")
def test_thread_split(tmp_path: Path) -> None:
    from ablagen.orchestrate.local import LocalBackend
    from ablagen.orchestrate.options import usable_cpus

    backend = LocalBackend(tmp_path, RunOptions(jobs=2), tmp_path, [])
    assert backend.threads == max(1, usable_cpus() // 2)
    assert LocalBackend(tmp_path, RunOptions(jobs=64), tmp_path, []).threads == 1
    # torch's default
    assert LocalBackend(tmp_path, RunOptions(jobs=1), tmp_path, []).threads is None


ENVIRONMENT_SCRIPT = '''"""Reports what a script sees of its interpreter."""
import argparse
import json
import os
import sys

parser = argparse.ArgumentParser()
for flag in ("--epochs", "--seed", "--device"):
    parser.add_argument(flag)
parser.add_argument("--out")
args = parser.parse_args()
seen = {
    "status": "ok",
    "name": __name__,
    "file": __file__,
    "argv0": sys.argv[0],
    "path": sys.path,
    "cwd": os.getcwd(),
    "stdin": sys.stdin.read(),
    "final": {"val_acc": 1.0},
}
with open(args.out, "w") as fh:
    json.dump(seen, fh)
'''


def test_a_script_sees_what_python_shows_it(tmp_path: Path) -> None:
    study = tmp_path / "study"
    study.mkdir()
    (study / "baseline.py").write_text(ENVIRONMENT_SCRIPT)
    write_manifest(study, ["baseline"])
    out = tmp_path / "reference.json"
    argv = [sys.executable, "baseline.py", "--seed", "0", "--out", str(out)]
    subprocess.run(argv, cwd=study, check=True, stdin=subprocess.DEVNULL)
    (rec,) = run_collecting(study, RunOptions(jobs=1, **LIGHT))[1]
    ref = json.loads(out.read_text())
    assert rec.status == "ok"
    for key in ("name", "file", "path", "cwd", "stdin"):
        assert rec.result[key] == ref[key], key
    # runpy.run_path makes argv[0] the script's absolute path: the same file
    assert Path(rec.result["argv0"]) == study.resolve() / ref["argv0"]
