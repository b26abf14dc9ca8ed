"""A run executes to its end at most once (issue #24): a result written before its
orchestrator (or the run's own process) died is stored, never run again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest_orchestrate import counter, db_rows, make_study

from ablagen.cli import main
from ablagen.orchestrate.options import RunOptions
from ablagen.orchestrate.runner import plan_runs
from ablagen.core.studydir import load_manifest

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def light_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ablagen.orchestrate.local.BASE_PRELOAD", ())


def test_a_result_left_by_a_dead_orchestrator_is_stored_not_rerun(
    tmp_path: Path,
) -> None:
    study = make_study(tmp_path / "study", {"baseline": "ok", "a:zero": "ok"})
    specs = plan_runs(study, load_manifest(study), RunOptions())
    left = next(s for s in specs if s.variant_id == "a:zero")
    # what the script wrote as its last act before the orchestrator was killed
    written = {"schema": 1, "status": "ok", "final": {"val_acc": 0.75}, "history": []}
    (study / "logs").mkdir()
    (study / left.result_path).write_text(json.dumps(written))
    assert main(["run", str(study), "--jobs", "2", "--quiet"]) == 0
    assert counter(study) == {"baseline 0": 1}  # a:zero did not run again
    rows = {v: (status, json.loads(r)) for v, _, status, r in db_rows(study)}
    assert rows["a:zero"] == ("ok", written)
    assert not (study / left.result_path).exists()  # stored: the file goes
    assert not list((study / "logs").glob("*.result.json"))


def test_a_stored_runs_leftover_result_is_not_taken_for_a_retry(tmp_path: Path) -> None:
    study = make_study(tmp_path / "study", {"baseline": "raise"})
    assert main(["run", str(study), "--quiet"]) == 1
    (spec,) = plan_runs(study, load_manifest(study), RunOptions())
    # stored as failed, then the orchestrator died before it removed the file
    ok = {"schema": 1, "status": "ok", "final": {"val_acc": 0.75}, "history": []}
    (study / spec.result_path).write_text(json.dumps(ok))
    assert main(["run", str(study), "--retry-failed", "--quiet"]) == 1
    assert [status for _, _, status, _ in db_rows(study)] == ["failed"]  # ran again


def test_a_run_killed_after_writing_its_result_is_ok(tmp_path: Path) -> None:
    study = make_study(
        tmp_path / "study", {"baseline": "diesafter", "b:zero": "sigkill"}
    )
    assert main(["run", str(study), "--quiet"]) == 1
    rows = {v: status for v, _, status, _ in db_rows(study)}
    assert rows == {"baseline": "ok", "b:zero": "crashed"}  # b died before writing


def test_a_failed_result_left_behind_runs_again(tmp_path: Path) -> None:
    """A failure (say, the script's own ENOSPC) is not taken as the run's outcome:
    the run goes again, so a full disk that is gone does not fail it forever."""
    study = make_study(tmp_path / "study", {"baseline": "ok"})
    (spec,) = plan_runs(study, load_manifest(study), RunOptions())
    failed = {"schema": 1, "status": "failed", "error": "OSError: [Errno 28] ..."}
    (study / "logs").mkdir()
    (study / spec.result_path).write_text(json.dumps(failed))
    assert main(["run", str(study), "--quiet"]) == 0
    assert counter(study) == {"baseline 0": 1}
    assert [status for _, _, status, _ in db_rows(study)] == ["ok"]
