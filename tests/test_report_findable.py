"""Issue #30.7: reports you can find (rank prints report.html; a two-stage study has
a report at its top) and a Configuration table a person can read."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import ablagen.rank.ranking
from ablagen.cli import main
from ablagen.report.html import REPORT_HTML
from ablagen.report.markdown import REPORT_MD, config_rows, write_stage_index
from ablagen.core.studydir import load_manifest
from test_report import _manifest_json, _records

COMMAND = "ablagen generate ../m.py --out . --dataset build_data --epochs 8"


@pytest.fixture()
def study(tmp_path: Path) -> Path:
    study = tmp_path / "study"
    study.mkdir()
    manifest = _manifest_json()
    manifest["config"] = {
        "command": COMMAND,
        "mode": "retrain",
        "components": [],
        "methods": [],
        "kinds": ["layer", "block"],
        "dropout": None,
        "data": {"dataset": "build_data", "classes": [], "val_fraction": 0.2},
        "train": {"epochs": 8, "lr": 0.003, "compile": False},
    }
    (study / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    for v in manifest["variants"]:
        (study / v["script"]).write_text("# script\n", encoding="utf-8")
    return study


def test_configuration_rows_are_plain_and_once(study: Path) -> None:
    rows = config_rows(load_manifest(study))
    assert rows == [
        ("mode", "retrain"),
        ("model", "../examples/tiny.py"),
        ("model sha256", "abc"),
        ("command", COMMAND),
        ("data.dataset", "build_data"),
        ("data.val_fraction", "0.2"),
        ("kinds", "layer, block"),
        ("train.compile", "no"),
        ("train.epochs", "8"),
        ("train.lr", "0.003"),
    ]


def test_rank_writes_and_names_report_html_with_the_same_configuration(
    study: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(ablagen.rank.ranking, "load_records", lambda study_dir: _records())
    assert main(["rank", str(study)]) == 0
    err = capsys.readouterr().err
    assert re.search(r"wrote .*report\.md, report\.html$", err.strip())
    md = (study / REPORT_MD).read_text()
    config = md.split("## Configuration")[1].split("##")[0]
    assert config.count("| mode |") == 1 and f"| command | `{COMMAND}` |" in config
    assert "components" not in config and "methods" not in config and "{" not in config
    html = (study / REPORT_HTML).read_text()
    assert html.count("<td>mode</td>") == 1 and "<td>data.dataset</td>" in html
    assert "&#34;" not in html.split('id="config"')[1]  # no JSON-quoted strings


def test_stage_index_links_each_stage_report(tmp_path: Path) -> None:
    out = tmp_path / "two"
    for stage in ("screen", "retrain"):
        (out / stage).mkdir(parents=True)
    md, html = write_stage_index(
        out,
        "Two-stage ablation study: two",
        "A taylor screen, then retraining.",
        (("Stage 1: taylor screen", out / "screen"), ("Stage 2: retraining", out / "retrain")),
        (("Taylor screen versus retraining", "Spearman **+0.500**.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"),),
    )  # fmt: skip
    assert (md, html) == (out / REPORT_MD, out / REPORT_HTML)
    text = md.read_text()
    assert (
        "- [Stage 1: taylor screen](screen/report.md) ([html](screen/report.html))"
        in text
    )
    assert "## Taylor screen versus retraining" in text
    page = html.read_text()
    assert '<a href="retrain/report.html">Stage 2: retraining</a>' in page
    assert "<strong>+0.500</strong>" in page and "<table" in page
