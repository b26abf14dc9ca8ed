"""Report, plots and the `ablagen rank` command on a study directory built in tmp_path."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

import ablagen.rank.ranking
from ablagen.cli import main
from ablagen.arms.noise_scales import (
    NOISE_SCALES_JSON,
    noise_scales,
    write_noise_scales,
)
from ablagen.orchestrate.run_record import RunRecord
from ablagen.rank.ranking import IMPORTANCE_CSV, IMPORTANCE_JSON, rank, write_importance
from ablagen.report.markdown import (
    CURVES_PNG,
    IMPORTANCE_PNG,
    REPORT_MD,
    write_plots,
    write_report,
)
from ablagen.core.studydir import load_manifest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DROPS = {"conv1:zero": 0.5, "fc1:zero": 0.1, "fc1[0:4]:mask": 0.0}
BASE = {0: 0.90, 1: 0.92, 2: 0.88}


def _manifest_json() -> dict:
    variants = [
        {
            "id": "baseline",
            "component": None,
            "kind": "baseline",
            "method": None,
            "script": "baseline.py",
            "sha256": "s-baseline",
        }
    ]
    for vid in sorted([*DROPS, "relu@0:identity"]):
        comp, method = vid.rsplit(":", 1)
        kind = "neuron" if "[" in comp else "activation" if "@" in comp else "layer"
        variants.append(
            {
                "id": vid,
                "component": comp,
                "kind": kind,
                "method": method,
                "script": vid.replace(":", "__").replace("[", "_").replace("]", "_")
                + ".py",
                "sha256": f"s-{vid}",
            }
        )
    comps = [
        {
            "id": "conv1",
            "kind": "layer",
            "op": "Conv2d",
            "module": "conv1",
            "param_owner": "conv1",
            "units": None,
            "methods": ["zero"],
            "params": 80,
        },
        {
            "id": "fc1",
            "kind": "layer",
            "op": "Linear",
            "module": "fc1",
            "param_owner": "fc1",
            "units": None,
            "methods": ["zero"],
            "params": 136,
        },
        {
            "id": "fc1[0:4]",
            "kind": "neuron",
            "op": "Linear",
            "module": "fc1",
            "param_owner": "fc1",
            "units": [0, 4],
            "methods": ["mask"],
            "params": 0,
        },
        {
            "id": "relu@0",
            "kind": "activation",
            "op": "ReLU",
            "module": "relu",
            "param_owner": "conv1",
            "units": None,
            "methods": ["identity"],
            "params": 0,
        },
    ]
    params = [
        ["conv1.weight", [8, 1, 3, 3]],
        ["conv1.bias", [8]],
        ["fc1.weight", [8, 16]],
        ["fc1.bias", [8]],
        ["fc2.weight", [10, 8]],
        ["fc2.bias", [10]],
    ]
    return {
        "format": 1,
        "ablagen_version": "0.1.0",
        "mode": "retrain",
        "model": {
            "path": "../examples/tiny.py",
            "sha256": "abc",
            "name": "Tiny",
            "parameters": params,
        },
        "config": {"epochs": 2, "methods": ["zero", "mask"], "neuron_groups": 2},
        "components": comps,
        "variants": variants,
    }


def _result(vid: str, seed: int, acc: float) -> dict:
    history = [
        {"epoch": e, "val_acc": acc * e / 2, "val_loss": 1 - acc * e / 2}
        for e in (1, 2)
    ]
    return {
        "schema": 1,
        "variant": vid,
        "status": "ok",
        "seed": seed,
        "history": history,
        "final": {"val_acc": acc, "val_loss": 1 - acc},
        "epochs_to_target": None,
    }


def _records() -> list[RunRecord]:
    recs = []
    for seed, base in BASE.items():
        recs.append(
            RunRecord(
                "baseline",
                seed,
                {"epochs": 2},
                "s-baseline",
                "ok",
                _result("baseline", seed, base),
                wall_time_s=1.0,
            )
        )
        for vid, drop in DROPS.items():
            acc = base - drop - 0.01 * seed * (drop > 0)
            recs.append(
                RunRecord(
                    vid,
                    seed,
                    {"epochs": 2},
                    f"s-{vid}",
                    "ok",
                    _result(vid, seed, acc),
                    wall_time_s=1.0,
                )
            )
        recs.append(
            RunRecord(
                "relu@0:identity",
                seed,
                {"epochs": 2},
                "s-relu@0:identity",
                "diverged" if seed == 1 else "ok",
                _result("relu@0:identity", seed, 0.1),
                wall_time_s=1.0,
            )
        )
    return recs


@pytest.fixture()
def study(tmp_path: Path) -> Path:
    study = tmp_path / "study"
    study.mkdir()
    manifest = _manifest_json()
    (study / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    for v in manifest["variants"]:
        (study / v["script"]).write_text("# script\n", encoding="utf-8")
    return study


def _write_everything(study: Path) -> dict[str, bytes]:
    manifest = load_manifest(study)
    records = _records()
    ranking = rank(manifest, records)
    scales = noise_scales(manifest, ranking)
    write_importance(study, ranking)
    write_noise_scales(study, scales)
    write_plots(study, manifest, ranking, records)
    write_report(
        study,
        manifest,
        ranking,
        records,
        [("Four-arm comparison", "arm table")],
        noise=scales,
    )
    names = (
        IMPORTANCE_JSON,
        IMPORTANCE_CSV,
        NOISE_SCALES_JSON,
        IMPORTANCE_PNG,
        CURVES_PNG,
        REPORT_MD,
    )
    return {name: (study / name).read_bytes() for name in names}


def test_report_files_contents_and_determinism(
    study: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(study.parent)  # commands in report.md are relative to the cwd
    first = _write_everything(study)
    assert _write_everything(study) == first  # byte-identical, PNGs included
    for name in (IMPORTANCE_PNG, CURVES_PNG):
        assert first[name].startswith(PNG_MAGIC) and len(first[name]) > 1000
    report = first[REPORT_MD].decode()
    # conv1's drop is .5 + .01 * seed: mean .51
    assert "| 1 | `conv1:zero` | layer | zero | +0.5100 |" in report
    assert "| 2 | `fc1:zero` | layer | zero |" in report
    assert "`fc1[0:4]:mask`" in report and "≈0" in report
    assert (
        "`relu@0:identity` | activation | seed 0: ok, seed 1: diverged, seed 2: ok"
        in report
    )
    assert (
        "![importance.png](importance.png)" in report
        and "![curves.png](curves.png)" in report
    )
    assert (
        "ablagen generate examples/tiny.py --out study --epochs 2 --methods zero,mask"
        in report
    )
    assert "ablagen run study --seeds 0,1,2 --epochs 2\n" in report
    assert "ablagen rank study --metric val_acc\n" in report
    assert report.rstrip().endswith("## Four-arm comparison\n\narm table")


def test_importance_json_and_csv_agree(study: Path) -> None:
    files = _write_everything(study)
    data = json.loads(files[IMPORTANCE_JSON])
    rows = list(csv.DictReader(io.StringIO(files[IMPORTANCE_CSV].decode())))
    assert [r["variant"] for r in data["rows"]] == [
        "conv1:zero",
        "fc1:zero",
        "fc1[0:4]:mask",
    ]
    assert [r["variant"] for r in rows] == [
        "conv1:zero",
        "fc1:zero",
        "fc1[0:4]:mask",
        "relu@0:identity",
    ]
    assert float(rows[0]["importance_mean"]) == pytest.approx(data["rows"][0]["mean"])
    assert rows[2]["ci_includes_zero"] == "true" and rows[3]["status"].startswith(
        "failed"
    )
    assert data["failed"][0]["statuses"] == {"0": "ok", "1": "diverged", "2": "ok"}
    noise = json.loads(files[NOISE_SCALES_JSON])
    assert set(noise["parameters"]) == {
        "conv1.weight",
        "conv1.bias",
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
    }
    assert (
        len(noise["parameters"]["fc1.weight"]) == 8
        and noise["parameters"]["fc2.bias"] == 1.0
    )


@pytest.fixture()
def fake_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        ablagen.rank.ranking, "load_records", lambda study_dir: _records()
    )


def test_cli_rank_prints_table_and_writes_files(
    study: Path, fake_store: None, capsys
) -> None:
    assert main(["rank", str(study)]) == 0
    out = capsys.readouterr().out
    assert "conv1:zero" in out and "fc1[0:4]:mask" in out and "not ranked" in out
    for name in (
        IMPORTANCE_JSON,
        IMPORTANCE_CSV,
        NOISE_SCALES_JSON,
        IMPORTANCE_PNG,
        CURVES_PNG,
        REPORT_MD,
    ):
        assert (study / name).is_file(), name


def test_cli_rank_json_csv_and_no_plots(study: Path, fake_store: None, capsys) -> None:
    assert (
        main(["rank", str(study), "--json", "--no-plots", "--metric", "val_loss"]) == 0
    )
    printed = capsys.readouterr().out
    assert json.loads(printed) == json.loads((study / IMPORTANCE_JSON).read_text())
    assert json.loads(printed)["metric"] == "val_loss"
    assert not (study / IMPORTANCE_PNG).exists()
    assert main(["rank", str(study), "--csv", "--no-plots"]) == 0
    assert capsys.readouterr().out == (study / IMPORTANCE_CSV).read_text()


def test_cli_rank_errors_exit_2_with_one_line(
    study: Path, fake_store: None, capsys
) -> None:
    assert main(["rank", str(study), "--temperature", "0"]) == 2
    assert "temperature" in capsys.readouterr().err
    assert main(["rank", str(study), "--metric", "val_f1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'val_f1'" in err and "val_acc" in err
    assert not (study / REPORT_MD).exists()  # nothing half-written


def test_cli_rank_without_results_says_run_it_first(study: Path, capsys) -> None:
    assert main(["rank", str(study)]) == 2  # the real adapter: no results.sqlite yet
    err = capsys.readouterr().err
    assert "no results in" in err and "run it first with `ablagen run" in err


def test_cli_rank_reads_the_real_result_store(study: Path, capsys) -> None:
    from ablagen.orchestrate.store import ResultStore

    with ResultStore(study) as store:
        for rec in _records():
            store.finish(rec)
    assert main(["rank", str(study), "--json", "--no-plots"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["variant"] for r in data["rows"]] == [
        "conv1:zero",
        "fc1:zero",
        "fc1[0:4]:mask",
    ]
    assert data["rows"][0]["mean"] == pytest.approx(0.51)
    assert [f["variant"] for f in data["failed"]] == ["relu@0:identity"]


def test_one_seed_gives_no_interval_and_suggests_seeds(
    study: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A ranking over one seed marks no variant "≈0" -- not even conv1, whose
    ablation costs half the accuracy: its significance column says "–" (no
    interval), and the report, report.html, the CSV and `ablagen rank` say once that
    more seeds give intervals."""
    seed0 = [r for r in _records() if r.seed == 0]
    monkeypatch.setattr(ablagen.rank.ranking, "load_records", lambda study_dir: seed0)
    assert main(["rank", str(study)]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps the note
    assert "│ 2 │ conv1:zero │ layer │ zero │ +0.5000 │ – │ 1 │ – │" in out
    assert out.count("≈0") == 1  # the column's header only
    assert "every variant ranked on one seed" in out and "--seeds 0,1,2" in out
    report = (study / REPORT_MD).read_text(encoding="utf-8")
    assert "| 2 | `conv1:zero` | layer | zero | +0.5000 | – | 1 | – |" in report
    assert "| `fc1[0:4]:mask` | neuron | mask | +0.0000 | – | 1 | – |" in report
    assert report.count("**Note:** Every variant ranked on one seed") == 1
    html = (study / "report.html").read_text(encoding="utf-8")
    assert "<td>–</td>" in html and "<td>≈0</td>" not in html
    rows = list(csv.DictReader(io.StringIO((study / IMPORTANCE_CSV).read_text())))
    assert {r["ci_includes_zero"] for r in rows if r["status"] == "ranked"} == {""}
    data = json.loads((study / IMPORTANCE_JSON).read_text())
    assert {r["ci_includes_zero"] for r in data["rows"]} == {None}


def test_tiny_importances_read_as_numbers():
    """A val_loss importance of 3e-5 is not printed +0.0000 (rank's table and both
    reports print through ranking.readable)."""
    from ablagen.rank.ranking import readable

    assert readable(3e-5) == "+3.00e-05" and readable(-3e-5, False) == "-3.00e-05"
    assert readable(0.0123) == "+0.0123" and readable(0.0) == "+0.0000"
    assert readable(None) == "n/a"
