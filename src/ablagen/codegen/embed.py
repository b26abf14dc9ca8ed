"""Library packages as blocks of code for generated scripts.

Generated scripts must not import ablagen, so the parts they run (the perturbed
optimizer, the knockout engine) are embedded from the library's own source, the
one source of truth. Such a package lists its modules in ``EMBED_ORDER``
(dependencies first); each imports only the standard library, torch and its
siblings (relative imports). :func:`embed_package` joins them into one block:
their imports merged and deduplicated at the top, the sibling imports and the
package scaffolding (module docstrings, ``__all__``, ``from __future__``
imports, ``if __name__ == "__main__":`` blocks) dropped.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from types import ModuleType

import libcst as cst

import ablagen


@functools.lru_cache(maxsize=None)
def embed_package(package: ModuleType, title: str) -> str:
    """The modules of ``package`` as one block under a header comment naming it."""
    folder = Path(package.__file__ or "").parent
    sources = [
        (folder / f"{name}.py").read_text(encoding="utf-8")
        for name in package.EMBED_ORDER
    ]
    header = (
        f"# --- {title} (embedded from {package.__name__} "
        f"v{ablagen.__version__}; edit there, not here) ---\n"
    )
    return header + join_modules(sources)


def join_modules(sources: list[str]) -> str:
    """Modules as one: their imports merged at the top, sibling imports dropped."""
    plain: dict[str, None] = {}  # "import x" lines, in order, once each
    named: dict[str, dict[str, None]] = {}  # module -> names imported from it
    bodies = []
    for source in sources:
        module = cst.parse_module(strip_package_scaffolding(source))
        kept = []
        for statement in module.body:
            if _is_import_line(statement):
                for small in statement.body:  # type: ignore[attr-defined]
                    _collect(small, plain, named)
            else:
                kept.append(statement)
        if kept:
            kept[0] = kept[0].with_changes(leading_lines=())
            bodies.append(module.with_changes(body=kept).code.strip("\n"))
    return _import_block(plain, named) + "\n\n\n" + "\n\n\n".join(bodies) + "\n"


def _import_block(plain: dict[str, None], named: dict[str, dict[str, None]]) -> str:
    """The imports as isort writes them: the standard library, then the rest."""
    groups: dict[bool, list[str]] = {True: [], False: []}
    for line in sorted(plain, key=lambda line: line.split()[1]):
        groups[_is_stdlib(line.split()[1])].append(line)
    for module in sorted(named):
        names = ", ".join(sorted(named[module], key=lambda name: name.lower()))
        groups[_is_stdlib(module)].append(f"from {module} import {names}")
    return "\n\n".join("\n".join(group) for group in groups.values() if group)


def _is_stdlib(module: str) -> bool:
    return module.split(".")[0] in sys.stdlib_module_names


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


def _is_import_line(statement: cst.CSTNode) -> bool:
    return isinstance(statement, cst.SimpleStatementLine) and all(
        isinstance(small, (cst.Import, cst.ImportFrom)) for small in statement.body
    )


def _collect(
    small: cst.BaseSmallStatement,
    plain: dict[str, None],
    named: dict[str, dict[str, None]],
) -> None:
    code = cst.Module(body=[]).code_for_node
    if isinstance(small, cst.Import):
        for alias in small.names:
            plain[f"import {code(alias).rstrip(', ')}"] = None
        return
    assert isinstance(small, cst.ImportFrom)
    if small.relative:  # a sibling module: its code is in the block
        return
    module = code(small.module) if small.module is not None else ""
    if isinstance(small.names, cst.ImportStar):
        plain[f"from {module} import *"] = None
        return
    names = named.setdefault(module, {})
    for alias in small.names:
        names[code(alias).rstrip(", ")] = None


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
