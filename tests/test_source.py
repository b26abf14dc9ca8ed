"""libcst: gather visitors and rewriting transforms, each against before/after strings."""

from __future__ import annotations

from textwrap import dedent

import libcst as cst
import pytest

from ablagen.core.errors import ModelFileError
from ablagen.source import embed_model_source
from ablagen.source.gather import needed_statements, top_level_statements
from ablagen.source.transforms import (
    DropMainGuard,
    KeepStatements,
    SetConstants,
)
from conftest import MODELS


def transform(source: str, transformer: cst.CSTTransformer) -> str:
    return cst.parse_module(dedent(source)).visit(transformer).code


def test_drop_main_guard():
    before = """\
        import torch

        X = 1

        if __name__ == "__main__":
            print(X)
        """
    after = """\
        import torch

        X = 1
        """
    assert transform(before, DropMainGuard()) == dedent(after)


def test_keep_statements_drops_the_docstring_and_the_rest():
    before = '''\
        """Module docstring."""

        import os
        import torch

        UNUSED = 3
        WIDTH = 4
        '''
    after = """\
        import torch
        WIDTH = 4
        """
    assert transform(before, KeepStatements({2, 4})) == dedent(after)


def test_set_constants_rewrites_only_top_level_assignments():
    before = """\
        DROPOUT = 0.1  # the rate
        def f():
            DROPOUT = 0.5
            return DROPOUT
        """
    after = """\
        DROPOUT = 0.3  # the rate
        def f():
            DROPOUT = 0.5
            return DROPOUT
        """
    assert transform(before, SetConstants({"DROPOUT": "0.3"})) == dedent(after)


def test_gather_defines_and_uses():
    module = cst.parse_module(dedent("""\
            import torch.nn.functional as F
            from torch import nn as N, optim
            A, B = 1, 2
            def f(x):
                return F.relu(x) + A
            class M(N.Module):
                width = B
            """))
    facts = {tuple(sorted(s.defines)): s for s in top_level_statements(module)}
    assert set(facts) == {("F",), ("N", "optim"), ("A", "B"), ("f",), ("M",)}
    assert {"F", "A", "x"} <= facts[("f",)].uses and "relu" not in facts[("f",)].uses
    assert facts[("M",)].uses >= {"N", "B"}
    assert facts[("F",)].imported_modules == ("torch.nn.functional",)
    assert facts[("N", "optim")].import_from == "torch"


def test_needed_statements_closes_over_uses():
    module = cst.parse_module(dedent("""\
            import os
            import torch
            W = 4
            UNUSED = 5
            def helper():
                return torch.zeros(W)
            def model():
                return helper()
            """))
    kept = needed_statements(top_level_statements(module), {"model"})
    assert [sorted(s.defines) for s in kept] == [
        ["torch"],
        ["W"],
        ["helper"],
        ["model"],
    ]


def test_sibling_imports_are_embedded_first():
    embedded = embed_model_source(MODELS / "sibling_user.py", {"UsesSibling"})
    code = embedded.code
    assert "def make_head" in code and "WIDTH = 4" in code
    assert code.index("def make_head") < code.index("class UsesSibling")
    assert "from sibling_parts import" not in code
    assert [p.name for p in embedded.files] == ["sibling_parts.py", "sibling_user.py"]
    namespace: dict = {}
    exec(
        compile(code, "<embedded>", "exec"), namespace
    )  # standalone: runs without the files
    assert namespace["UsesSibling"]().head.in_features == 4


@pytest.mark.parametrize(
    "source",
    [
        "from sibling_parts import *\n\nM = make_head\n",
        "from .sibling_parts import make_head\n\nM = make_head\n",
    ],
)
def test_star_and_relative_sibling_imports_are_embedded(tmp_path, source):
    (tmp_path / "sibling_parts.py").write_text(
        "def make_head():\n    return 1\n\n\ndef unused():\n    return 2\n"
    )
    model = tmp_path / "model.py"
    model.write_text(source)
    code = embed_model_source(model, {"M"}).code
    assert "def make_head" in code and "def unused" not in code
    assert "import" not in code
    namespace: dict = {}
    exec(compile(code, "<embedded>", "exec"), namespace)
    assert namespace["M"]() == 1


def test_a_sibling_imported_as_a_whole_is_reported(tmp_path):
    (tmp_path / "sibling_parts.py").write_text("def make_head():\n    return 1\n")
    model = tmp_path / "model.py"
    model.write_text("import sibling_parts\n\nM = sibling_parts.make_head\n")
    with pytest.raises(ModelFileError, match="as a whole"):
        embed_model_source(model, {"M"})
