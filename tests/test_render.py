"""The renderer's passes: imports hoisted into one block, names the model shares with
the script refused."""

from __future__ import annotations

import textwrap

import pytest

from ablagen.source.imports import Imports, import_block, split_imports
from conftest import run_cli


def test_imports_leave_their_chunk_and_its_comments_stay() -> None:
    before = textwrap.dedent("""\
        # -----
        # model: a header comment above an import
        import math
        from torch import nn
        import torch.nn.functional as F, os


        def f():
            import json  # inside a function: stays
            return math.pi
        from .sibling import g  # relative: stays
        """)
    imports, rest = split_imports(before)
    assert rest == textwrap.dedent("""\
        # -----
        # model: a header comment above an import


        def f():
            import json  # inside a function: stays
            return math.pi
        from .sibling import g  # relative: stays
        """)
    assert imports == Imports(
        ("import math", "import torch.nn.functional as F", "import os"),
        (("torch", "nn"),),
    )


def test_import_block_merges_and_sorts_like_isort() -> None:
    first = Imports(("import torch", "import os"), (("torch", "nn"),))
    second = Imports(
        ("import os", "import argparse", "import torch.nn.functional as F"),
        (("pathlib", "Path"), ("torch", "fx"), ("__future__", "annotations")),
    )
    assert import_block(first | second) == textwrap.dedent("""\
        from __future__ import annotations

        import argparse
        import os
        from pathlib import Path

        import torch
        import torch.nn.functional as F
        from torch import fx, nn
        """)
    assert (first | second).bound_names() >= {"os", "torch", "F", "nn", "Path"}


MODEL = """
import torch
from torch import nn

INPUT_SHAPE = (4,)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return {use}


{extra}
"""


@pytest.mark.parametrize(
    ("extra", "flags", "clash"),
    [
        ("def evaluate(y):\n    return y", [], "evaluate"),
        ("def GradientNoise(y):\n    return y", ["--sigma", "0.01"], "GradientNoise"),
        ("EPOCHS = 1", [], "EPOCHS"),
        ("from torch import relu as make_optimizer", [], "make_optimizer"),
    ],
)
def test_a_name_the_script_defines_too_is_refused(
    tmp_path, capsys, extra, flags, clash
):
    """The model's forward uses the name, so its definition is embedded."""
    model = tmp_path / "model.py"
    use = f"self.fc(x) * {clash}" if clash == "EPOCHS" else f"{clash}(self.fc(x))"
    model.write_text(MODEL.format(extra=extra, use=use))
    out = tmp_path / "study"
    args = ["generate", model, "--out", out, "--dataset", "synthetic", *flags]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and f"defines {clash}, which" in err and err.count("\n") == 1
    assert not out.exists()


def test_a_name_only_noise_scripts_define_is_free_in_plain_studies(tmp_path, capsys):
    model = tmp_path / "model.py"
    extra = "def GradientNoise(y):\n    return y"
    model.write_text(MODEL.format(extra=extra, use="GradientNoise(self.fc(x))"))
    args = ["generate", model, "--out", tmp_path / "study", "--dataset", "synthetic"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err


def test_noise_scale_table_is_compact_exact_and_black_stable() -> None:
    """Per-unit lists wrap many numbers to a line; black (fenced off) leaves them."""
    import black

    from ablagen.codegen.env import py_table
    from ablagen.codegen.render import BLACK_MODE

    scales = {"fc1.weight": [round(0.1 + i / 7, 6) for i in range(64)], "fc2.b": 0.5}
    text = "# fmt: off\nNOISE_SCALES = " + py_table(scales) + "\n# fmt: on\n"
    namespace: dict = {}
    exec(text, namespace)
    assert namespace["NOISE_SCALES"] == scales
    assert black.format_str(text, mode=BLACK_MODE) == text
    assert len(text.splitlines()) < 20  # black alone: one line per number
    assert max(len(line) for line in text.splitlines()) <= 88
