"""The renderer's passes: imports hoisted into one block (the names the model shares
with the script are tested in test_names.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest


from ablagen.source.imports import Imports, import_block, split_imports


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


def test_noise_scale_table_is_compact_exact_and_black_stable() -> None:
    """Per-unit lists wrap many numbers to a line; black (fenced off) leaves them."""
    import black

    from ablagen.generate.env import py_table
    from ablagen.generate.render import BLACK_MODE

    scales = {"fc1.weight": [round(0.1 + i / 7, 6) for i in range(64)], "fc2.b": 0.5}
    text = "# fmt: off\nNOISE_SCALES = " + py_table(scales) + "\n# fmt: on\n"
    namespace: dict = {}
    exec(text, namespace)
    assert namespace["NOISE_SCALES"] == scales
    assert black.format_str(text, mode=BLACK_MODE) == text
    assert len(text.splitlines()) < 20  # black alone: one line per number
    assert max(len(line) for line in text.splitlines()) <= 88


def _scripts() -> list[Path]:
    root = Path(__file__).resolve().parents[1]
    return sorted((root / "tests" / "golden").rglob("*.py")) + sorted(
        (root / "generated" / "digits_cnn").glob("*.py")
    )


@pytest.mark.parametrize("path", _scripts(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_formatting_by_shape_is_black_itself(path) -> None:
    """Literals swapped for others of other lengths and spellings (numbers grown,
    strings and comments rewritten, quotes switched): black by shape gives black's
    bytes, on the script and on its unformatted variant."""
    import re

    import black

    from ablagen.generate.render import BLACK_MODE
    from ablagen.generate.by_shape import format_by_shape

    def fmt(text: str) -> str:
        return black.format_str(text, mode=BLACK_MODE)

    text = path.read_text()
    grown = re.sub(r"\b[1-9][0-9]*\b", lambda m: str(int(m.group()) * 37 + 11), text)
    swapped = re.sub(r'"([a-z_]+)"', r"'\1_x'", grown)  # simple strings, other quotes
    commented = re.sub(r"# ([a-z])", r"# also \1", swapped)
    squeezed = commented.replace(",\n    ", ", ")  # undo some of black's wrapping
    for variant in (text, grown, swapped, commented, squeezed):
        try:
            expected = fmt(variant)
        except black.InvalidInput:
            continue
        assert format_by_shape(variant, fmt) == expected
