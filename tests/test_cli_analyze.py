from __future__ import annotations

import json

from ablagen import __version__
from ablagen.analyze import analyze
from ablagen.analyze.loading import load_model
from conftest import EXAMPLES, MODELS, run_cli


def test_version_and_help(capsys):
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out.strip() == f"ablagen {__version__}"
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0 and "analyze" in out


def test_analyze_json_equals_library_inventory(capsys):
    code, out, err = run_cli(
        ["analyze", str(EXAMPLES / "digits_cnn.py"), "--json"], capsys
    )
    assert code == 0 and err == ""
    expected = analyze(load_model(str(EXAMPLES / "digits_cnn.py"))).to_json()
    assert json.loads(out) == expected


def test_analyze_table_lists_every_component(capsys):
    code, out, _ = run_cli(
        ["analyze", str(MODELS / "cnn_mixed.py"), "--neuron-groups", "2"], capsys
    )
    assert code == 0
    inv = analyze(load_model(str(MODELS / "cnn_mixed.py")), neuron_groups=2)
    for comp in inv.components:
        assert comp.id in out


def test_fallback_warns_on_stderr_once(capsys):
    code, out, err = run_cli(["analyze", str(MODELS / "dynamic.py"), "--json"], capsys)
    assert code == 0
    assert err.count("warning:") == 1 and "functional activations" in err
    assert json.loads(out)["traced"] is False
