"""The README's fault table comes from MATRIX: each row names a test that exists."""

from __future__ import annotations

import ast
from pathlib import Path

from faults.matrix import MATRIX, markdown_table

HERE = Path(__file__).parent


def test_every_row_names_an_existing_test() -> None:
    for fault in MATRIX:
        file, _, name = fault.test.partition("::")
        tree = ast.parse((HERE / file).read_text())
        tests = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert (name in tests) if name else tests, fault.name


def test_table_has_one_row_per_fault() -> None:
    lines = markdown_table().splitlines()
    assert lines[0] == "| fault | injected as | recorded | exit code | after a resume |"
    assert [line.split(" | ")[0].lstrip("| ") for line in lines[2:]] == [
        f.name for f in MATRIX
    ]
