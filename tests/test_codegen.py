"""Code generation: golden files, determinism, formatting, safe writes, bad input."""

from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path

import black
import pytest
import torch

from ablagen.generate.render import BLACK_MODE
from ablagen.core.studydir import load_manifest
from ablagen.generate.context import TrainConfig
from conftest import EXAMPLES, MODELS, ROOT, run_cli
from scriptutil import generate, load_script, new_model

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("ABLAGEN_UPDATE_GOLDEN") == "1"

GOLDEN_CASES = {
    "residual": (
        "residual.py",
        (
            "block:identity",
            "block.lin:zero",
            "fn.gelu:mean",
            "block.lin[2]:mask",
            "out:zero",
        ),
    ),
    "reused": ("reused.py", ("relu@1:zero",)),
    "cnn_mixed": ("cnn_mixed.py", ("act:identity",)),
    # gradient noise: only its kind and schedule, with SGD momentum, clipping, L1
    "noisy": ("reused.py", ("relu@1:zero",)),
}

#: training settings per golden case (default: TrainConfig(epochs=1))
GOLDEN_TRAIN = {
    # one prediction per position (batch, 3, 2): a tagger
    "residual": TrainConfig(epochs=1, task="tokens"),
    "noisy": TrainConfig(
        epochs=1,
        sigma=0.01,
        noise="dropnoise",
        noise_schedule="annealed",
        optimizer="momentum",
        grad_clip=1.0,
        l1=1e-4,
        scheduler="cyclic",
    ),
}


def _study_with_copied_model(tmp_path: Path, model: str, **kwargs) -> Path:
    """Copy the model next to the study so the relative path in the scripts is stable."""
    (tmp_path / "models").mkdir(exist_ok=True)
    shutil.copy(MODELS / model, tmp_path / "models" / model)
    return generate(
        tmp_path / "models" / model, tmp_path / "study", dataset="synthetic", **kwargs
    )


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_golden_scripts(tmp_path, case):
    model, comps = GOLDEN_CASES[case]
    train = GOLDEN_TRAIN.get(case, TrainConfig(epochs=1))
    study = _study_with_copied_model(tmp_path, model, components=comps, train=train)
    scripts = sorted(p.name for p in study.glob("*.py"))
    assert len(scripts) == len(comps) + 1
    for name in scripts:
        golden = GOLDEN / case / name
        if UPDATE:
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_bytes((study / name).read_bytes())
        assert (
            study / name
        ).read_text() == golden.read_text(), (
            f"{case}/{name} differs from its golden file"
        )


def test_generate_twice_gives_identical_bytes(tmp_path):
    a = generate(
        EXAMPLES / "digits_cnn.py",
        tmp_path / "a",
        kinds="layers,activations,neurons",
        neuron_groups=4,
    )
    b = generate(
        EXAMPLES / "digits_cnn.py",
        tmp_path / "b",
        kinds="layers,activations,neurons",
        neuron_groups=4,
    )
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_every_script_is_black_formatted_and_listed_with_its_hash(tmp_path):
    study = generate(
        EXAMPLES / "resnet_small.py", tmp_path / "r", kinds="layers,blocks,activations"
    )
    manifest = load_manifest(study)
    import hashlib

    for entry in manifest.variants:
        text = (study / entry.script).read_text()
        assert black.format_str(text, mode=BLACK_MODE) == text, entry.script
        assert hashlib.sha256(text.encode()).hexdigest() == entry.sha256
        imported = [
            name
            for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for name in (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
        ]
        assert not [n for n in imported if n.split(".")[0] == "ablagen"]
        assert text.startswith('"""') and entry.script in text.split('"""')[1]
    assert manifest.variants[0].id == "baseline"
    assert [v.id for v in manifest.variants[1:]] == sorted(
        v.id for v in manifest.variants[1:]
    )
    ids = [v.id for v in manifest.variants]
    assert len(ids) == len(set(ids))


def test_manifest_records_model_config_and_components(tmp_path):
    study = generate(EXAMPLES / "digits_cnn.py", tmp_path / "d")
    manifest = json.loads((study / "manifest.json").read_text())
    assert manifest["model"]["path"] == os.path.relpath(
        EXAMPLES / "digits_cnn.py", study
    )
    import hashlib

    assert (
        manifest["model"]["sha256"]
        == hashlib.sha256((EXAMPLES / "digits_cnn.py").read_bytes()).hexdigest()
    )
    assert manifest["config"]["data"]["split_seed"] == 0
    assert manifest["config"]["train"]["epochs"] == 1
    assert {c["id"] for c in manifest["components"]} >= {"conv1", "fn.relu", "fc1[0:2]"}
    assert ["conv1.weight", [16, 1, 3, 3]] in manifest["model"]["parameters"]


def test_odd_component_ids_are_escaped_literals(tmp_path):
    study = generate(MODELS / "odd_names.py", tmp_path / "odd", dataset="synthetic")
    manifest = load_manifest(study)
    ids = {v.id for v in manifest.variants}
    assert 'parts.it\'s "odd":identity' in ids and "parts.back\\slash x:zero" in ids
    for entry in manifest.variants:
        assert all(
            c.isalnum() and c.islower() or c in "_." or c.isdigit()
            for c in entry.script
        )
        namespace: dict = {}
        source = (study / entry.script).read_text()
        line = next(l for l in source.splitlines() if l.startswith("VARIANT = "))
        exec(line, namespace)
        assert namespace["VARIANT"] == entry.id


def test_regenerating_keeps_results_and_replaces_scripts(tmp_path):
    study = generate(EXAMPLES / "digits_cnn.py", tmp_path / "s", components=("conv1",))
    (study / "results.sqlite").write_bytes(b"results")
    (study / "logs").mkdir()
    (study / "logs" / "a.log").write_text("log")
    generate(EXAMPLES / "digits_cnn.py", study, components=("fc1",))
    assert (study / "results.sqlite").read_bytes() == b"results"
    assert (study / "logs" / "a.log").read_text() == "log"
    assert not (study / "conv1__zero.py").exists() and (study / "fc1__zero.py").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ablagen-")]


def test_failed_render_leaves_the_previous_study_untouched(tmp_path):
    study = generate(EXAMPLES / "digits_cnn.py", tmp_path / "s", components=("conv1",))
    before = {p.name: p.read_bytes() for p in study.iterdir()}
    bad = tmp_path / "tpl"
    bad.mkdir()
    (bad / "loop.py.j2").write_text("{{ ctx.no_such_field }}\n")
    code = _cli(
        ["generate", EXAMPLES / "digits_cnn.py", "--out", study, "--templates", bad]
    )
    assert code == 2
    assert {p.name: p.read_bytes() for p in study.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ablagen-")]


def _cli(args):
    from ablagen.cli import main

    return main([str(a) for a in args])


def test_user_template_overrides_one_include(tmp_path):
    tpl = tmp_path / "tpl"
    tpl.mkdir()
    builtin = (ROOT / "templates" / "loss.py.j2").read_text()
    (tpl / "loss.py.j2").write_text(builtin.replace("# %% loss", "# %% (my override) loss"))
    study = generate(EXAMPLES / "digits_cnn.py", tmp_path / "s", templates=tpl)
    assert "\n# %% (my override) loss and accuracy" in (study / "baseline.py").read_text()
    assert load_manifest(study).config["custom_templates"] is True


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--components", "nope"], "unknown component 'nope'"),
        (["--components", "conv1:identity"], "changes the shape"),
        (["--kinds", "layers,widgets"], "unknown kind 'widgets'"),
        (["--methods", "shrink"], "unknown method 'shrink'"),
        (["--templates", "/no/such/dir"], "does not exist"),
        (["--scheduler", "sometimes"], "unknown scheduler"),
        (["--weight-decay", "-1"], "--weight-decay"),
        (["--patience", "0"], "--patience"),
        (["--target-acc", "1.5"], "--target-acc"),
        (["--sigma", "-0.1"], "--sigma"),
        (["--noise", "purple"], "unknown noise kind"),
        (["--dataset", "wine"], "13 features"),
        (["--dropout", "1.5"], "--dropout"),
    ],
)
def test_bad_generate_options(tmp_path, capsys, args, needle):
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        ["generate", EXAMPLES / "digits_cnn.py", "--out", out, *args], capsys
    )
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err
    assert "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("template", "needle"),
    [
        ("{% if %}\n", "template syntax error in data.py.j2 line 1"),
        ("x = {{ ctx.nope }}\n", "undefined variable in data.py.j2 line 1"),
        ("def broken(:\n", "is not valid Python"),
        ('{% include "missing.py.j2" %}\n', "'missing.py.j2' not found"),
        ('{% include "../../etc/passwd" %}\n', "not found"),
    ],
)
def test_bad_templates(tmp_path, capsys, template, needle):
    tpl = tmp_path / "tpl"
    tpl.mkdir()
    (tpl / "data.py.j2").write_text(template)
    code, _, err = run_cli(
        [
            "generate",
            EXAMPLES / "digits_cnn.py",
            "--out",
            tmp_path / "o",
            "--templates",
            tpl,
        ],
        capsys,
    )
    assert code == 2 and needle in err and err.count("\n") == 1


def test_non_study_non_empty_out_is_refused_and_untouched(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, err = run_cli(
        ["generate", EXAMPLES / "digits_cnn.py", "--out", out], capsys
    )
    assert code == 2 and "not an ablagen study" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_study_of_another_model_needs_force(tmp_path, capsys):
    out = generate(EXAMPLES / "digits_cnn.py", tmp_path / "s", components=("conv1",))
    code, _, err = run_cli(
        ["generate", EXAMPLES / "tabular_mlp.py", "--out", out], capsys
    )
    assert code == 2 and "--force" in err
    code, _, err = run_cli(
        ["generate", EXAMPLES / "tabular_mlp.py", "--out", out, "--force"], capsys
    )
    assert code == 0, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, err = run_cli(
            ["generate", EXAMPLES / "digits_cnn.py", "--out", locked / "s"], capsys
        )
    finally:
        locked.chmod(0o700)
    assert code == 2 and "writable" in err


def test_out_under_a_file_is_unwritable(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(
        ["generate", EXAMPLES / "digits_cnn.py", "--out", blocker / "s"], capsys
    )
    assert code == 2 and "writable" in err and err.count("\n") == 1


@pytest.mark.slow
def test_custom_template_example_trains_a_sequence_model(tmp_path):
    """examples/sequence_tagger overrides loss.py.j2 only; its scripts train per-token tags."""
    import subprocess
    import sys

    example = ROOT / "examples" / "sequence_tagger"
    study = generate(
        example / "model.py",
        tmp_path / "seq",
        templates=example / "templates",
        components=("gru",),
    )
    text = (study / "baseline.py").read_text()
    assert "output.flatten(0, 1)" in text
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "gru__zero.py", "--epochs", "1", "--out", str(out)],
        cwd=study,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["status"] == "ok" and 0.0 <= result["final"]["val_acc"] <= 1.0


@pytest.mark.parametrize("mode", ["retrain", "knockout"])
@pytest.mark.parametrize("ref", ["uses_copy.py:Twin", "uses_copy.py:twin"])
def test_scripts_import_each_module_once_and_build_the_model(tmp_path, mode, ref):
    """``import copy`` is written by the scripts only when they copy an instance; the
    model's own ``import copy`` must then go, and stay otherwise."""
    study = generate(f"{MODELS}/{ref}", tmp_path / "s", dataset="synthetic", mode=mode)
    for script in sorted(study.glob("*.py")):
        tree = ast.parse(script.read_text())
        imports = [
            ast.unparse(node)
            for node in tree.body
            if isinstance(node, (ast.Import, ast.ImportFrom))
        ]
        assert len(imports) == len(set(imports)), script.name
        assert "import copy" in imports, script.name
        assert isinstance(new_model(load_script(script)), torch.nn.Module)
