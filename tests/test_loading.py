"""Model loading: how the model is found, and every bad input as one line + exit 2."""

from __future__ import annotations

import sys

import pytest
import torch

from ablagen.core.errors import InputShapeError, ModelFileError, ModelNotFoundError
from ablagen.analyze.loading import load_model, parse_shape
from ablagen.core.spec import split_model_spec
from conftest import EXAMPLES, MODELS, run_cli


def test_split_model_spec():
    assert split_model_spec("a/b.py:Net") == (
        __import__("pathlib").Path("a/b.py"),
        "Net",
    )
    assert split_model_spec("a/b.py")[1] is None
    assert split_model_spec("C:/x/b.py")[1] is None  # a drive letter is not a name


def test_finds_by_name_factory_instance_and_class():
    assert load_model(f"{MODELS}/two_models.py:A").ref.how == "class"
    assert load_model(f"{MODELS}/two_models.py:make_wide").ref.how == "factory"
    mlp = load_model(f"{MODELS}/mlp.py")
    assert (mlp.ref.name, mlp.ref.how) == ("build_model", "factory")
    outer = load_model(f"{MODELS}/residual.py")
    assert outer.ref.name == "ResNet"  # Block is a part of ResNet, not a candidate


def test_example_input_sources():
    assert load_model(f"{MODELS}/cnn_mixed.py").input_from == "example_input()"
    shaped = load_model(f"{MODELS}/mlp.py")
    assert shaped.input_from == "INPUT_SHAPE" and shaped.input_shapes == [(2, 4)]
    given = load_model(f"{MODELS}/mlp.py", "4")
    assert given.input_from == "--input-shape"
    assert load_model(f"{MODELS}/lstm.py").example_inputs[0].dtype == torch.long


def test_build_data_recorded():
    assert load_model(str(EXAMPLES / "digits_cnn.py")).has_build_data
    assert not load_model(f"{MODELS}/mlp.py").has_build_data


def test_sibling_imports_work_and_do_not_leak():
    loaded = load_model(f"{MODELS}/sibling_user.py")
    assert loaded.input_shapes == [(2, 4)]
    assert "sibling_parts" not in sys.modules
    assert str(MODELS) not in sys.path


def test_each_load_gets_a_fresh_module():
    a = load_model(f"{MODELS}/mlp.py")
    b = load_model(f"{MODELS}/mlp.py")
    assert a.module is not b.module and a.module.__name__ != b.module.__name__


@pytest.mark.parametrize(
    ("spec", "shape", "error", "needle"),
    [
        ("missing.py", None, ModelFileError, "does not exist"),
        (f"{MODELS}/../conftest.py.txt", None, ModelFileError, "does not exist"),
        (f"{MODELS}/broken_syntax.py", None, ModelFileError, "syntax error"),
        (f"{MODELS}/broken_import.py", None, ModelFileError, "not_a_real_package_xyz"),
        (f"{MODELS}/no_model.py", None, ModelNotFoundError, "no model found"),
        (
            f"{MODELS}/two_models.py",
            None,
            ModelNotFoundError,
            "several candidate models",
        ),
        (f"{MODELS}/mlp.py:Nope", None, ModelNotFoundError, "has no 'Nope'"),
        (
            f"{MODELS}/needs_args.py",
            None,
            ModelNotFoundError,
            "needs arguments (width)",
        ),
        (f"{MODELS}/mlp.py", "7", InputShapeError, "of shape (2, 7)"),
        (f"{MODELS}/mlp.py", "4,a", InputShapeError, "not a list of positive integers"),
    ],
)
def test_bad_input_library_errors(spec, shape, error, needle):
    with pytest.raises(error, match=None) as info:
        load_model(spec, shape)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_not_a_py_file(tmp_path):
    path = tmp_path / "model.txt"
    path.write_text("x = 1\n")
    with pytest.raises(ModelFileError, match="is not a .py file"):
        load_model(str(path))


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["analyze", "missing.py"], "does not exist"),
        (["analyze", f"{MODELS}/broken_syntax.py"], "line 3"),
        (["analyze", f"{MODELS}/broken_import.py"], "No module named"),
        (["analyze", f"{MODELS}/no_model.py"], "define build_model()"),
        (["analyze", f"{MODELS}/two_models.py"], ":NAME"),
        (["analyze", f"{MODELS}/mlp.py:Nope"], "use one of"),
        (["analyze", f"{MODELS}/needs_args.py"], "give them defaults"),
        (["analyze", f"{MODELS}/mlp.py", "--input-shape", "3,3"], "(2, 3, 3)"),
        (["analyze", f"{MODELS}/mlp.py", "--input-shape", "x"], "--input-shape 1,8,8"),
    ],
)
def test_bad_input_cli_one_line_exit_2(args, needle, capsys):
    code, out, err = run_cli(args, capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert needle in err
    assert "Traceback" not in err + out


def test_parse_shape():
    assert parse_shape("1,8,8") == (1, 8, 8)
    assert parse_shape("1x8x8") == (1, 8, 8)
    with pytest.raises(InputShapeError):
        parse_shape("0,3")
