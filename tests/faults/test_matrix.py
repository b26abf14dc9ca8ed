"""The README's fault table comes from MATRIX: each row names a test that exists."""

from __future__ import annotations

import ast
from pathlib import Path

from faults.matrix import MATRIX

HERE = Path(__file__).parent


def test_every_row_names_an_existing_test() -> None:
    for fault in MATRIX:
        file, _, name = fault.test.partition("::")
        tree = ast.parse((HERE / file).read_text())
        tests = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert (name in tests) if name else tests, fault.name


def test_the_reliability_page_has_one_row_per_fault() -> None:
    """The docs' table, read back cell by cell, holds the matrix's rows in order."""
    page = (HERE.parents[1] / "docs" / "guide" / "reliability.md").read_text()
    lines = page.splitlines()
    start = lines.index(
        "| fault | injected as | recorded | exit code | after a resume |"
    )
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("| "):
            break
        rows.append(tuple(cell.strip() for cell in line.strip("|").split(" | ")))
    assert rows == [
        (f.name, f.injected, f.recorded, f.exit_code, f.resume) for f in MATRIX
    ]
