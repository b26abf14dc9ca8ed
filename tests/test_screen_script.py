"""``ablagen generate --mode screen``: screen.py run for real, checked against the library,
then ranked by ``ablagen rank`` on the metric the study has (val_loss)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from ablagen.generate.knockout_mode import knockouts_for
from ablagen.generate.variants import ablation_spec, parse_kinds, plan_variants
from ablagen.analyze import analyze
from ablagen.analyze.loading import load_model
from ablagen.screen import screen_knockouts
from conftest import EXAMPLES, run_cli
from scriptutil import generate, load_script

pytestmark = pytest.mark.slow
KINDS = "layers,blocks,activations,neurons"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("screen") / "digits"
    generate(EXAMPLES / "digits_cnn.py", out, mode="screen", kinds=KINDS,
             neuron_groups=4, dataset="synthetic")  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "screen.py", "--epochs", "1", "--out", "r.json", "--checkpoint", "b.pt"],
        cwd=out, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


def test_manifest_points_every_entry_at_screen_py(study):
    manifest = json.loads((study / "manifest.json").read_text())
    assert manifest["mode"] == "screen"
    assert {v["script"] for v in manifest["variants"]} == {"screen.py"}
    assert all(v["extra"] == {"knockout": True} for v in manifest["variants"])


def test_the_script_gives_the_librarys_estimates(study):
    result = json.loads((study / "r.json").read_text())
    script = load_script(study / "screen.py")
    model = script.load_checkpoint(str(study / "b.pt"), "cpu")
    x_train, _, x_val, y_val = script.load_data()
    inventory = analyze(load_model(str(EXAMPLES / "digits_cnn.py")), 4)
    specs = [
        ablation_spec(c, m) for c, m in plan_variants(inventory, parse_kinds(KINDS))
    ]
    knockouts = knockouts_for(inventory, specs)
    report = screen_knockouts(model, knockouts, x_train, x_val, y_val,
                              script.loss_fn, script.screen_correct, batch_size=script.BATCH_SIZE)  # fmt: skip
    base = result["variants"]["baseline"]["final"]
    assert base["val_loss"] == pytest.approx(report.baseline.loss, abs=1e-6)
    assert base["val_acc"] == pytest.approx(report.baseline.accuracy, abs=1e-9)
    assert len(result["variants"]) == len(knockouts) + 1
    for k, est in zip(knockouts, report.estimates):
        got = result["variants"][k.variant_id]
        assert got["status"] == est.status == "ok"
        assert got["final"]["val_acc"] is None  # the screen estimates no accuracy
        assert got["final"]["val_loss"] == pytest.approx(
            report.baseline.loss + est.delta_loss, abs=1e-6
        )


def test_run_and_rank_take_a_screen_like_a_knockout_study(study, capsys):
    code, _, err = run_cli(
        ["run", study, "--seeds", "0", "--jobs", "1", "--epochs", "1"], capsys
    )
    assert code == 0, err
    code, _, err = run_cli(["rank", study, "--no-plots"], capsys)
    assert code == 0, err
    ranked = json.loads((study / "importance.json").read_text())
    assert ranked["metric"] == "val_loss" and ranked["rows"]
    code, _, err = run_cli(
        ["rank", study, "--metric", "train_loss", "--no-plots"], capsys
    )
    assert code == 2 and "estimates val_loss only" in err
    code, _, err = run_cli(["rank", study, "--metric", "val_acc", "--no-plots"], capsys)
    assert code == 2 and "not val_acc" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_folder_study_screens_through_the_cli(tmp_path, capsys):
    """folder:DIR (images streamed through DataLoaders): generate --mode screen, run
    and rank through the CLI; every component estimated from the streamed batches."""
    from test_data_sources import write_digits

    digits = write_digits(tmp_path / "digits", count=60)
    study = tmp_path / "s"
    code, _, err = run_cli(
        ["generate", EXAMPLES / "folder_cnn.py", "--out", study, "--mode", "screen",
         "--dataset", f"folder:{digits}", "--batch-size", "8", "--num-workers", "0"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli(
        ["run", study, "--seeds", "0", "--jobs", "1", "--epochs", "1"], capsys
    )
    assert code == 0, err
    code, out, err = run_cli(["rank", study, "--no-plots"], capsys)
    assert code == 0, err
    ranked = json.loads((study / "importance.json").read_text())
    manifest = json.loads((study / "manifest.json").read_text())
    ablations = [v["id"] for v in manifest["variants"] if v["id"] != "baseline"]
    assert ranked["metric"] == "val_loss" and not ranked["failed"]
    assert sorted(r["variant"] for r in ranked["rows"]) == sorted(ablations)
    assert "one seed" in " ".join(out.split())  # n = 1: no interval, said once
