"""The knockout engine as a block of code for generated ``knockout.py`` scripts.

``ablagen.knockout_engine`` is the one source of truth: the scripts must not import
ablagen, so they carry its modules' source, joined by
:func:`ablagen.codegen.embed.embed_package` as for the optimizer, after those of
:mod:`ablagen.ablate` (the ablation operators the engine applies).
"""

from __future__ import annotations

import ast

import ablagen.ablate
import ablagen.knockout_engine
from ablagen.codegen.embed import embed_package


def knockout_block_source() -> str:
    """``ablagen.knockout_engine`` (and the ``ablagen.ablate`` it needs) ready to paste
    into a script, under one header comment."""
    return embed_package(
        ablagen.knockout_engine, "knockout engine", needs=(ablagen.ablate,)
    )


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
