"""The knockout engine as a block of code for generated ``knockout.py`` scripts.

``ablagen.knockout_engine`` is the one source of truth: the scripts must not import
ablagen, so they carry its source, minus the package scaffolding (module docstring,
``__all__``, future imports, a main block), exactly as
:mod:`ablagen.codegen.perturb_block` does for the optimizer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ablagen
import ablagen.knockout_engine
from ablagen.codegen.perturb_block import strip_package_scaffolding


def knockout_block_source() -> str:
    """``ablagen/knockout_engine.py`` ready to paste into a script, under one header comment."""
    source = Path(ablagen.knockout_engine.__file__).read_text(encoding="utf-8")
    header = (
        f"# --- knockout engine (embedded from ablagen.knockout_engine "
        f"v{ablagen.__version__}; edit there, not here) ---\n"
    )
    return header + strip_package_scaffolding(source)


def defined_names(source: str) -> frozenset[str]:
    """Top-level names a block of code defines (functions, classes, assignments)."""
    names: set[str] = set()
    for statement in ast.parse(source).body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(statement.name)
        elif isinstance(statement, (ast.Assign, ast.AnnAssign)):
            targets = (
                statement.targets
                if isinstance(statement, ast.Assign)
                else [statement.target]
            )
            names.update(
                n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)
            )
    return frozenset(names)
