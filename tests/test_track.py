"""ablagen export / --track: runs read back through MLflow's own client and
TensorBoard's EventAccumulator, compared metric by metric with results.sqlite."""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest_orchestrate import make_study

from ablagen.cli import main
from ablagen.cli.export import optional_values
from ablagen.core.studydir import RESULTS_DB

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")
pytestmark = pytest.mark.timeout(180)

NOT_METRICS = ("schema", "seed", "epochs", "status", "variant", "error", "device")


def sqlite_runs(study: Path) -> dict[tuple[str, int], tuple[str, dict | None]]:
    """(variant, seed) -> (status, result) read with plain sqlite3."""
    conn = sqlite3.connect(study / RESULTS_DB)
    try:
        rows = conn.execute("SELECT variant_id, seed, status, result_json FROM runs")
        return {(v, s): (st, json.loads(r) if r else None) for v, s, st, r in rows}
    finally:
        conn.close()


def expected_metrics(result: dict | None) -> tuple[dict, dict]:
    """(final values by metric name, per-epoch series) the way the export names them."""
    result = result or {}
    final, series = {}, {}
    for i, entry in enumerate(result.get("history") or []):
        for key, value in entry.items():
            if key != "epoch" and isinstance(value, (int, float)):
                series.setdefault(key, []).append((entry.get("epoch", i + 1), value))
    for key, values in series.items():
        final[key] = values[-1][1]
    for key, value in (result.get("final") or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            final[f"final/{key}"] = value
    for key, value in result.items():
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if numeric and key not in NOT_METRICS:
            final[key] = value
    return final, series


def same(a: float, b: float, rel: float = 0.0) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b if rel == 0.0 else a == pytest.approx(b, rel=rel, abs=1e-7)


def mlflow_runs(uri: str) -> list:
    mlflow.set_tracking_uri(uri)
    # one experiment per study, besides the "Default" one a SQLite store starts with
    exps = [e for e in mlflow.search_experiments() if e.name != "Default"]
    assert len(exps) == 1
    return mlflow.search_runs(
        experiment_ids=[exps[0].experiment_id], output_format="list"
    )


def check_mlflow(study: Path, uri: str) -> None:
    from mlflow.tracking import MlflowClient

    stored = sqlite_runs(study)
    runs = mlflow_runs(uri)
    parents = {
        r.info.run_id: r for r in runs if "mlflow.parentRunId" not in r.data.tags
    }
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == len(stored)  # one run per variant x seed, no duplicates
    assert {p.data.params["variant"] for p in parents.values()} == {
        v for v, _ in stored
    }
    client = MlflowClient(tracking_uri=uri)
    for run in children:
        key = (run.data.params["variant"], int(run.data.params["seed"]))
        status, result = stored[key]
        parent = parents[run.data.tags["mlflow.parentRunId"]]
        assert parent.data.params["variant"] == key[0]
        assert run.data.tags["status"] == status
        assert run.info.status == ("FINISHED" if status == "ok" else "FAILED")
        if status != "ok":
            assert run.data.tags["error"]  # the error text travels with the run
        final, series = expected_metrics(result)
        assert set(run.data.metrics) == set(final)
        for name, value in final.items():
            assert same(run.data.metrics[name], value), (key, name)
        for name, values in series.items():
            history = client.get_metric_history(run.info.run_id, name)
            got = sorted((m.step, m.value) for m in history)
            assert len(got) == len(values)
            for (s1, v1), (s2, v2) in zip(got, values):
                assert s1 == s2 and same(v1, v2)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert run.data.params["script"] in artifacts
        assert ("result.json" in artifacts) == (result is not None)


def check_tensorboard(study: Path, logdir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator,
    )

    stored = sqlite_runs(study)
    dirs = sorted(p.parent for p in logdir.glob("*/seed*/.ablagen.json"))
    assert len(dirs) == len(stored)
    for run_dir in dirs:
        events = list(run_dir.glob("events.out.tfevents.*"))
        assert len(events) == 1  # a re-export replaces, never appends
        acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        acc.Reload()
        marker = json.loads((run_dir / ".ablagen.json").read_text())
        variant = marker["key"].split("|")[0]
        seed = int(run_dir.name.removeprefix("seed"))
        _, result = stored[(variant, seed)]
        final, series = expected_metrics(result)
        assert set(acc.Tags()["scalars"]) == set(final)
        for name, value in final.items():
            if name not in series:
                (event,) = acc.Scalars(name)
                assert same(event.value, value, rel=1e-6), (run_dir, name)
        for name, values in series.items():
            got = [(e.step, e.value) for e in acc.Scalars(name)]
            assert [s for s, _ in got] == [s for s, _ in values]
            assert all(same(a, b, rel=1e-6) for (_, a), (_, b) in zip(got, values))


@pytest.fixture
def study(tmp_path: Path) -> Path:
    return make_study(
        tmp_path / "study",
        {"baseline": "ok", "a:zero": "raise", "b:zero": "ok", "c:zero": "nan"},
    )


def test_live_tracking_then_export_is_idempotent(study: Path, capsys) -> None:
    argv = ["run", str(study), "--seeds", "0,1", "--jobs", "2"]
    assert main([*argv, "--track", "mlflow", "--track", "tensorboard"]) == 1
    capsys.readouterr()
    uri = f"sqlite:///{(study / 'mlflow.db').resolve()}"
    check_mlflow(study, uri)
    check_tensorboard(study, study / "tensorboard")

    # export after live tracking: everything is already there
    assert main(["export", str(study), "--mlflow", "--tensorboard", "-q"]) == 0
    out = capsys.readouterr().out
    assert (
        "mlflow: 8 runs of 4 variants, 12 entries with the variants' own (12 unchanged)"
        in out
    )
    assert (
        "tensorboard: 8 runs of 4 variants, 12 entries with the variants' own (12 unchanged)"
        in out
    )
    assert "4 runs not ok, exported with status and error: a:zero seed=0 failed" in out
    assert "c:zero seed=0 diverged: train_loss is not finite" in out
    check_mlflow(study, uri)
    check_tensorboard(study, study / "tensorboard")


def test_export_replaces_a_changed_run_and_keeps_one_of_each(study: Path, capsys):
    assert main(["run", str(study), "--seeds", "0", "-q"]) == 1
    mlruns, tb = study.parent / "store", study.parent / "tb"
    argv = ["export", str(study), "--mlflow", str(mlruns), "--tensorboard", str(tb)]
    assert main([*argv, "-q"]) == 0
    assert "(8 created)" in capsys.readouterr().out
    # a retried run: same key, new outcome
    conn = sqlite3.connect(study / RESULTS_DB)
    with conn:
        (text,) = conn.execute(
            "SELECT result_json FROM runs WHERE variant_id='b:zero'"
        ).fetchone()
        result = json.loads(text)
        result["final"]["val_acc"] = 0.25
        conn.execute(
            "UPDATE runs SET result_json=? WHERE variant_id='b:zero'",
            (json.dumps(result),),
        )
    conn.close()
    assert main([*argv, "-q"]) == 0
    out = capsys.readouterr().out
    # b:zero's run and the parents whose importance changed are written again
    assert "1 created" not in out and "replaced" in out
    uri = f"sqlite:///{(mlruns / 'mlflow.db').resolve()}"  # a directory: SQLite in it
    check_mlflow(study, uri)
    check_tensorboard(study, tb)
    runs = mlflow_runs(uri)
    (b,) = [
        r
        for r in runs
        if r.data.params.get("variant") == "b:zero" and "seed" in r.data.params
    ]
    assert b.data.metrics["final/val_acc"] == 0.25


def test_parent_runs_carry_the_importance(tmp_path: Path, capsys) -> None:
    from ablagen.rank.ranking import load_records, rank
    from ablagen.core.studydir import load_manifest

    study = make_study(tmp_path / "s", {"baseline": "ok", "a:zero": "ok"})
    assert main(["run", str(study), "--seeds", "0,1,2", "-q"]) == 0
    assert main(["export", str(study), "--mlflow", "-q"]) == 0
    capsys.readouterr()
    row = rank(load_manifest(study), load_records(study)).row("a:zero")
    runs = mlflow_runs(f"sqlite:///{(study / 'mlflow.db').resolve()}")
    (parent,) = [
        r
        for r in runs
        if "mlflow.parentRunId" not in r.data.tags
        and r.data.params["variant"] == "a:zero"
    ]
    metrics = parent.data.metrics
    assert metrics["importance/mean"] == row.mean
    assert metrics["importance/ci_low"] == row.ci_low
    assert metrics["importance/ci_high"] == row.ci_high
    assert metrics["importance/n"] == 3 and parent.data.tags["status"] == "ranked"


def test_export_without_a_tty_prints_plain_lines(study: Path) -> None:
    assert main(["run", str(study), "-q"]) == 1
    proc = subprocess.run(
        [sys.executable, "-m", "ablagen", "export", str(study), "--tensorboard"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "\x1b" not in proc.stdout  # no colours or cursor moves in a pipe
    # the first line counts what the progress and the summary count (issue #30.7)
    runs, variants, total = map(int, re.findall(r"\d+", lines[0].split(" to ")[0]))
    assert lines[0] == (
        f"exporting {runs} runs of {variants} variants, {total} entries with the "
        f"variants' own to tensorboard ({(study / 'tensorboard').resolve()})"
    )
    assert runs + variants == total
    assert lines[1].startswith(f"[{' ' * (len(str(total)) - 1)}1/{total}] ")
    summary = [line for line in lines if line.startswith("tensorboard: ")]
    assert len(summary) == 1 and summary[0].startswith(
        f"tensorboard: {runs} runs of {variants} variants, {total} entries"
    )
    assert "[6/8] created   a:zero seed=0 failed" in lines
    assert (
        lines[-1] == f"view: tensorboard --logdir {(study / 'tensorboard').resolve()}"
    )


def test_the_default_store_opens_in_plain_mlflow_without_a_flag(tmp_path: Path):
    """The export's default store is SQLite (STUDY/mlflow.db): mlflow.search_runs in
    a fresh process without MLFLOW_ALLOW_FILE_STORE opens it, artifacts included,
    with the URI the view line prints."""
    study = make_study(tmp_path / "study", {"baseline": "ok", "a:zero": "ok"})
    assert main(["run", str(study), "-q"]) == 0
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_ALLOW_FILE_STORE"}
    export = subprocess.run(
        [sys.executable, "-m", "ablagen", "export", str(study), "--mlflow", "-q"],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip
    assert export.returncode == 0 and export.stderr == "", export.stderr
    uri = f"sqlite:///{(study / 'mlflow.db').resolve()}"
    assert (
        export.stdout.splitlines()[-1] == f"view: mlflow ui --backend-store-uri {uri}"
    )
    assert not (study / "mlruns").exists()
    reader = f"""
import mlflow
mlflow.set_tracking_uri({uri!r})
runs = mlflow.search_runs(experiment_names=[{str(study.resolve())!r}], output_format="list")
seed_runs = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
client = mlflow.MlflowClient()
files = sorted(a.path for r in runs for a in client.list_artifacts(r.info.run_id))
print(len(runs), len(seed_runs), files[0] if files else "-")
"""
    read = subprocess.run(
        [sys.executable, "-c", reader],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip
    assert read.returncode == 0, read.stderr
    stored = sqlite_runs(study)
    total, seeds, artifact = read.stdout.split()
    assert (int(total), int(seeds)) == (len(stored) + 2, len(stored))
    assert artifact != "-" and (study / "mlartifacts").is_dir()


@pytest.fixture(scope="module")
def ran_study(tmp_path_factory) -> Path:
    """A study run once (a failing run included); the bad-input tests only read it."""
    study = make_study(
        tmp_path_factory.mktemp("ran") / "study", {"baseline": "ok", "a:zero": "raise"}
    )
    assert main(["run", str(study), "-q"]) == 1
    return study


def _listing(study: Path) -> list[str]:
    """The study's files, less SQLite's WAL side files (any reader makes them)."""
    return sorted(p.name for p in study.iterdir() if "sqlite-" not in p.name)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["export", "{study}"], "nothing to export to"),
        (["export", "{tmp}/nope", "--mlflow"], "does not exist"),
        (["export", "{fresh}", "--mlflow"], "no results in"),
        (["export", "{study}", "--tensorboard", "{file}/tb"], "cannot write the TensorBoard directory"),
        (["export", "{study}", "--mlflow", "{file}/ml"], "cannot write the MLflow store"),
        (["export", "{study}", "--mlflow", "bogus://x"], "cannot use the MLflow tracking URI 'bogus://x'"),
        (["run", "{study}", "--track", "wandb"], "unknown tracker 'wandb'"),
        (["run", "{study}", "--track", "tensorboard={file}/tb"], "cannot write the TensorBoard directory"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(argv, message, ran_study, tmp_path, capsys):
    fresh = make_study(tmp_path / "fresh", {"baseline": "ok"})
    (tmp_path / "file").write_text("a file, not a directory")
    capsys.readouterr()
    before = _listing(ran_study)
    argv = [
        a.format(study=ran_study, tmp=tmp_path, fresh=fresh, file=tmp_path / "file")
        for a in argv
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert _listing(ran_study) == before  # nothing written
    assert _listing(fresh) == ["baseline.py", "manifest.json"]


@pytest.mark.parametrize(("module", "flag"), [("mlflow", "--mlflow"), ("tensorboard", "--tensorboard")])  # fmt: skip
def test_missing_extra_names_the_pip_install(
    module, flag, ran_study, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` fails
    before = _listing(ran_study)
    assert main(["export", str(ran_study), flag]) == 2
    assert capsys.readouterr().err == (
        f"error: {module} is not installed; install it with `pip install 'ablagen[track]'`\n"
    )
    assert main(["run", str(ran_study), "--track", module]) == 2  # before any run
    assert "pip install 'ablagen[track]'" in capsys.readouterr().err
    assert _listing(ran_study) == before


def test_the_sqlite_store_without_sqlalchemy_names_the_pip_install(
    ran_study, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)  # mlflow-skinny alone
    before = _listing(ran_study)
    assert main(["export", str(ran_study), "--mlflow"]) == 2
    assert capsys.readouterr().err == (
        "error: MLflow's SQLite store needs sqlalchemy, which is not installed; "
        "install it with `pip install 'ablagen[track]'`, or pass a tracking "
        "server's URI to --mlflow\n"
    )
    assert main(["run", str(ran_study), "--track", "mlflow"]) == 2  # before any run
    assert "pip install 'ablagen[track]'" in capsys.readouterr().err
    assert _listing(ran_study) == before


def test_optional_values_of_mlflow_and_tensorboard() -> None:
    assert optional_values(["export", "S", "--mlflow"]) == ["export", "S", "--mlflow="]
    assert optional_values(["export", "S", "--mlflow", "http://h:5000", "-q"]) == [
        "export", "S", "--mlflow=http://h:5000", "-q"]  # fmt: skip
    assert optional_values(["export", "--mlflow", "S"]) == ["export", "--mlflow=", "S"]
    assert optional_values(["export", "--mlflow", "U", "S", "--tensorboard"]) == [
        "export", "--mlflow=U", "S", "--tensorboard="]  # fmt: skip
    assert optional_values(["export", "S", "--tensorboard", "--mlflow"]) == [
        "export", "S", "--tensorboard=", "--mlflow="]  # fmt: skip
    assert optional_values(["study", "m.py", "--out", "export"]) == [
        "study", "m.py", "--out", "export"]  # fmt: skip
