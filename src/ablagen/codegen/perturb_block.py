"""The perturbation-aware optimizer as a block of code for generated scripts.

``ablagen.perturb`` is the one source of truth: generated training scripts
must not import ablagen, so they carry its source, minus the parts that only
make sense in a package (module docstring, ``__all__``, ``from __future__``
imports, an ``if __name__ == "__main__":`` block).
"""

from __future__ import annotations

import functools
from pathlib import Path

import libcst as cst

import ablagen
import ablagen.perturb


@functools.lru_cache(maxsize=1)
def perturb_block_source() -> str:
    """``ablagen/perturb.py`` ready to paste into a script, under one header comment.

    The block keeps its own imports, so it works below any other imports.
    """
    source = Path(ablagen.perturb.__file__).read_text(encoding="utf-8")
    header = (
        f"# --- perturbation-aware optimizer (embedded from ablagen.perturb "
        f"v{ablagen.__version__}; edit there, not here) ---\n"
    )
    return header + strip_package_scaffolding(source)


def strip_package_scaffolding(source: str) -> str:
    """``source`` minus module docstring, ``__all__``, future imports, main block."""
    module = cst.parse_module(source)
    body = [
        statement
        for index, statement in enumerate(module.body)
        if not (index == 0 and _is_docstring(statement))
        and not _is_scaffolding(statement)
    ]
    if body:  # the blank lines that separated the docstring from the code
        body[0] = body[0].with_changes(leading_lines=())
    return module.with_changes(header=(), body=body).code


def _is_docstring(statement: cst.CSTNode) -> bool:
    return (
        isinstance(statement, cst.SimpleStatementLine)
        and len(statement.body) == 1
        and isinstance(statement.body[0], cst.Expr)
        and isinstance(
            statement.body[0].value, (cst.SimpleString, cst.ConcatenatedString)
        )
    )


def _is_scaffolding(statement: cst.CSTNode) -> bool:
    if isinstance(statement, cst.If):
        return _is_main_guard(statement.test)
    if not isinstance(statement, cst.SimpleStatementLine):
        return False
    return any(
        _is_future_import(small) or _assigns_all(small) for small in statement.body
    )


def _is_future_import(small: cst.BaseSmallStatement) -> bool:
    return (
        isinstance(small, cst.ImportFrom)
        and isinstance(small.module, cst.Name)
        and small.module.value == "__future__"
    )


def _assigns_all(small: cst.BaseSmallStatement) -> bool:
    if isinstance(small, cst.Assign):
        targets = [target.target for target in small.targets]
    elif isinstance(small, (cst.AnnAssign, cst.AugAssign)):
        targets = [small.target]
    else:
        return False
    return any(isinstance(t, cst.Name) and t.value == "__all__" for t in targets)


def _is_main_guard(test: cst.BaseExpression) -> bool:
    if not (isinstance(test, cst.Comparison) and len(test.comparisons) == 1):
        return False
    names = [test.left, test.comparisons[0].comparator]
    has_name = any(isinstance(n, cst.Name) and n.value == "__name__" for n in names)
    has_main = any(
        isinstance(n, cst.SimpleString) and n.evaluated_value == "__main__"
        for n in names
    )
    return has_name and has_main and isinstance(test.comparisons[0].operator, cst.Equal)
