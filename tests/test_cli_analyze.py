from __future__ import annotations

import json
import os
import re
from pathlib import Path

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
        ["analyze", str(MODELS / "cnn_mixed.py"), "--neuron-groups", "2", "--flat"],
        capsys,
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


TREE_GOLDEN = Path(__file__).resolve().parent / "golden" / "analyze_tree"


def test_tree_of_resnet_small_equals_its_golden(capsys):
    code, out, err = run_cli(["analyze", str(EXAMPLES / "resnet_small.py")], capsys)
    assert code == 0 and err == ""
    golden = TREE_GOLDEN / "resnet_small.txt"
    if os.environ.get("ABLAGEN_UPDATE_GOLDEN"):
        golden.write_text(out, encoding="utf-8")
    assert out == golden.read_text(encoding="utf-8")


def _tree_ids(out: str) -> list[str]:
    """The component id that starts each tree line (after the guides)."""
    lines = out.splitlines()[2:]  # title and column header
    return [re.sub(r"^[│├└─ ]+", "", line).split("  ")[0] for line in lines]


def test_tree_folds_groups_and_heads_and_shows_every_other_component(capsys):
    path = str(EXAMPLES / "tiny_gpt.py")
    code, out, _ = run_cli(["analyze", path], capsys)
    assert code == 0
    inv = analyze(load_model(path))
    ids = _tree_ids(out)
    listed = [c.id for c in inv.components if c.kind not in ("neuron", "head")]
    assert sorted(set(listed) - set(ids)) == [] and len(ids) == len(set(ids))
    lines = dict(zip(ids, out.splitlines()[2:]))
    for module in {c.module for c in inv.components if c.kind == "neuron"}:
        groups = [
            c for c in inv.components if c.kind == "neuron" and c.module == module
        ]
        units = sum(c.units[1] - c.units[0] for c in groups)
        assert f"{units} units in {len(groups)} groups · mask" in lines[module]
    heads = [c for c in inv.components if c.kind == "head" and c.module == "h.0.attn"]
    assert len(heads) == 4 and "4 heads · mask,mean" in lines["h.0.attn"]
    assert "residual" in lines["h.0"] and "residual" not in lines["h.1"]


def test_tree_of_resnet18_fits_in_about_80_lines():
    """The issue's example: torchvision's ResNet-18 (736 components, a 741-line
    table) reads as a tree of under 80 lines, every block and layer on one (the
    library's render: the CLI prints the same, see the resnet_small golden)."""
    from ablagen.analyze.module_tree import render_tree

    loaded = load_model(f"{MODELS / 'resnet18.py'}:resnet18")
    inv = analyze(loaded)
    types = {name: type(m).__name__ for name, m in loaded.model.named_modules()}
    out = render_tree(inv, types)
    assert len(inv.components) > 700 and len(out.splitlines()) <= 80
    ids = _tree_ids(out)
    for comp in inv.components:
        if comp.kind in ("layer", "block", "activation"):
            assert comp.id in ids
    # a module of no component of its own still shows where its layers sit
    assert "layer2.0.downsample" in ids


def test_tree_places_call_sites_export_calls_and_heads_by_hand():
    """A hand-made inventory: a module called at two sites (one line each, its
    children under the first), a functional call torch.export found (under its
    module), heads of a module that is no component, a container named by type."""
    from ablagen.analyze.components import Component, Inventory
    from ablagen.analyze.module_tree import render_tree

    def comp(id_, kind, module, **kw):
        base = dict(op="Linear", call_site=None, node=None, input_shape=(2, 4),
                    output_shape=(2, 4), params=20, methods=("zero",))  # fmt: skip
        return Component(id=id_, kind=kind, module=module, **{**base, **kw})

    comps = (comp("enc.fc", "layer", "enc.fc"), comp(
        "enc.fc[0:2]", "neuron", "enc.fc", units=(0, 2), methods=("mask",)
    ), comp("enc.fc[2:4]", "neuron", "enc.fc", units=(2, 4), methods=("mask",)), comp(
        "fn.enc.gelu@0",
        "activation",
        "enc",
        op="gelu",
        params=0,
        call_op="gelu",
        call_index=0),  # fmt: skip
        comp("att.heads[0]", "head", "att", units=(0, 2), methods=("mask", "mean")),
        comp("att.heads[1]", "head", "att", units=(2, 4), methods=("mask", "mean")),
        comp("blk@0", "block", "blk", op="Block", call_site=0),
        comp("blk.fc", "layer", "blk.fc"),
        comp("blk@1", "block", "blk", op="Block", call_site=1, feeds_residual=True),
    )
    inventory = Inventory("class Net", False, ((2, 4),), comps, (("w", (4, 5)),),
                          tracer="export")  # fmt: skip
    text = render_tree(inventory, {"enc": "Encoder", "att": "Attention"})
    lines = [line.rstrip() for line in text.splitlines()]
    assert lines[0] == "class Net: 9 components, 20 parameters (read by torch.export)"
    rows = [re.sub(r"^[│├└─ ]+", "", line) for line in lines[2:]]
    names = [row.split()[0] for row in rows]
    assert names == [
        "enc",
        "enc.fc",
        "fn.enc.gelu@0",
        "att",
        "blk@0",
        "blk.fc",
        "blk@1",
    ]
    by_name = dict(zip(names, rows))
    assert by_name["enc"].split() == ["enc", "Encoder"]
    assert by_name["enc.fc"].endswith("4 units in 2 groups · mask")
    assert by_name["att"].split()[1:] == ["Attention", "2", "heads", "·", "mask,mean"]
    assert by_name["blk@1"].endswith("residual") and "│   └── blk.fc" in text
    assert text == render_tree(inventory, {"enc": "Encoder", "att": "Attention"})
