"""Issue #30: a model file edited after generate is named before a run trains the old
model silently; a model file given where a study directory is expected is named so."""

from __future__ import annotations

import shutil

from conftest import MODELS, run_cli
from scriptutil import generate


def _study_of_a_copied_model(tmp_path):
    model = tmp_path / "net.py"
    shutil.copy(MODELS / "mlp.py", model)
    out = generate(model, tmp_path / "study", dataset="synthetic", kinds="layers")
    return model, out


def test_status_and_run_warn_when_the_model_changed_since_generate(tmp_path, capsys):
    model, out = _study_of_a_copied_model(tmp_path)
    code, _, err = run_cli(["status", out], capsys)
    assert code == 0 and "changed" not in err  # unchanged: no warning
    model.write_text(model.read_text().replace("nn.Linear(4, 6)", "nn.Linear(4, 8)"))
    model.write_text(model.read_text().replace("nn.Linear(6, 3)", "nn.Linear(8, 3)"))
    code, _, err = run_cli(["status", out], capsys)
    assert code == 0
    lines = [line for line in err.splitlines() if "changed since" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: ../net.py changed since")
    assert f"cd {out} && ablagen generate ../net.py --out ." in lines[0]
    code, _, err = run_cli(
        ["run", out, "--only", "baseline", "--epochs", "1", "--jobs", "1", "--quiet"],
        capsys,
    )
    assert code == 0
    assert sum("changed since" in line for line in err.splitlines()) == 1


def test_rank_on_a_model_file_says_it_is_not_a_study(tmp_path, capsys):
    model = tmp_path / "my_cnn.py"
    shutil.copy(MODELS / "mlp.py", model)
    for command in ("rank", "status", "hybrid"):
        code, _, err = run_cli([command, model], capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert "is a file, not a study directory" in err and "does not exist" not in err
        assert "studies/my_cnn" in err
