"""Library packages as blocks of code for generated scripts.

Generated scripts must not import ablagen, so the parts they run (the perturbed
optimizer, the knockout engine) are embedded from the library's own source, the
one source of truth. Such a package lists its modules in ``EMBED_ORDER``
(dependencies first); each imports only the standard library, torch and its
siblings (relative imports). :func:`embed_package` joins them into one block:
their imports merged and deduplicated at the top, the sibling imports and the
package scaffolding (module docstrings, ``__all__``, ``from __future__``
imports, ``if __name__ == "__main__":`` blocks) dropped.
:func:`extract_definitions` takes only some definitions of such a package (and
those they use), so that a script carries only the code it runs.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from types import ModuleType

import libcst as cst

import ablagen


@functools.lru_cache(maxsize=None)
def embed_package(
    package: ModuleType, title: str, needs: tuple[ModuleType, ...] = ()
) -> str:
    """The modules of ``package`` as one block under a header comment naming it,
    after those of the packages it ``needs`` (whose imports it then drops)."""
    packages = (*needs, package)
    sources = [source for p in packages for source in package_sources(p)]
    names = " and ".join(p.__name__ for p in packages)
    header = (
        f"# --- {title} (embedded from {names} "
        f"v{ablagen.__version__}; edit there, not here) ---\n"
    )
    return header + join_modules(sources, frozenset(p.__name__ for p in needs))


def package_sources(package: ModuleType) -> list[str]:
    """The source of each module ``package`` lists in ``EMBED_ORDER``, in that order."""
    folder = Path(package.__file__ or "").parent
    return [
        (folder / f"{name}.py").read_text(encoding="utf-8")
        for name in package.EMBED_ORDER
    ]


@functools.lru_cache(maxsize=None)
def extract_definitions(
    package: ModuleType, names: tuple[str, ...], comment: str = ""
) -> str:
    """The top-level definitions ``names`` of ``package``'s modules, with every other
    definition of the package they use, in the package's order, after the imports
    they need (and ``comment``, a line right above the code): the library's own
    source, cut down to what a script runs."""
    defined: dict[str, int] = {}  # name -> index of the statement defining it
    statements: list[cst.BaseStatement] = []
    imports: dict[str, cst.BaseSmallStatement] = {}  # bound name -> its import
    for source in package_sources(package):
        for statement in _parse_body(strip_package_scaffolding(source)):
            if _is_import_line(statement):
                for small in statement.body:  # type: ignore[attr-defined]
                    imports.update(_bindings(small))
                continue
            for name in _defines(statement):
                defined[name] = len(statements)
            statements.append(statement)
    wanted, chosen, used = list(names), set(), set()
    while wanted:
        name = wanted.pop()
        if name not in defined:
            raise KeyError(f"{package.__name__} defines no {name!r}")
        if defined[name] in chosen:
            continue
        chosen.add(defined[name])
        uses = _uses(statements[defined[name]])
        used |= uses
        wanted += [n for n in uses if n in defined and defined[n] not in chosen]
    plain: dict[str, None] = {}
    named: dict[str, dict[str, None]] = {}
    for name in sorted(used & imports.keys()):
        _collect(imports[name], plain, named)
    code = "\n\n\n".join(_statement_code(statements[i]) for i in sorted(chosen))
    above = f"# {comment}\n" if comment else ""
    return f"{_import_block(plain, named)}\n\n\n{above}{code}\n"


def _parse_body(source: str) -> list[cst.BaseStatement]:
    return list(cst.parse_module(source).body)


def _defines(statement: cst.BaseStatement) -> list[str]:
    """The top-level names a statement binds (a def, a class, an assignment)."""
    if isinstance(statement, (cst.FunctionDef, cst.ClassDef)):
        return [statement.name.value]
    if not isinstance(statement, cst.SimpleStatementLine):
        return []
    targets: list[cst.BaseExpression] = []
    for small in statement.body:
        if isinstance(small, cst.Assign):
            targets += [t.target for t in small.targets]
        elif isinstance(small, cst.AnnAssign):
            targets.append(small.target)
    return [t.value for t in targets if isinstance(t, cst.Name)]


def _uses(statement: cst.BaseStatement) -> set[str]:
    """Every name a statement mentions (more than it reads: enough to find what it needs)."""

    class Names(cst.CSTVisitor):
        def __init__(self) -> None:
            self.found: set[str] = set()

        def visit_Name(self, node: cst.Name) -> None:
            self.found.add(node.value)

    names = Names()
    statement.visit(names)
    return names.found


def _bindings(small: cst.BaseSmallStatement) -> dict[str, cst.BaseSmallStatement]:
    """Each name an import binds, with an import of that name alone."""
    if isinstance(small, cst.ImportFrom) and small.relative:
        return {}  # a sibling's definitions are found by name
    if not isinstance(small, (cst.Import, cst.ImportFrom)) or isinstance(
        small.names, cst.ImportStar
    ):
        return {}
    bound = {}
    for alias in small.names:
        code = cst.Module(body=[]).code_for_node
        name = code(alias.asname.name) if alias.asname else code(alias.name)
        bound[name.split(".")[0]] = small.with_changes(
            names=[alias.with_changes(comma=cst.MaybeSentinel.DEFAULT)]
        )
    return bound


def _statement_code(statement: cst.BaseStatement) -> str:
    """A statement's source with its comments above it, not the blank lines."""
    kept = [line for line in statement.leading_lines if line.comment is not None]
    statement = statement.with_changes(leading_lines=kept)
    return cst.Module(body=[statement]).code.strip("\n")


def join_modules(sources: list[str], embedded: frozenset[str] = frozenset()) -> str:
    """Modules as one: their imports merged at the top, sibling imports and imports
    from the ``embedded`` packages (their code is in the block too) dropped."""
    plain: dict[str, None] = {}  # "import x" lines, in order, once each
    named: dict[str, dict[str, None]] = {}  # module -> names imported from it
    bodies = []
    for source in sources:
        module = cst.parse_module(strip_package_scaffolding(source))
        kept = []
        for statement in module.body:
            if _is_import_line(statement):
                for small in statement.body:  # type: ignore[attr-defined]
                    _collect(small, plain, named, embedded)
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
    embedded: frozenset[str] = frozenset(),
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
    if _within(module, embedded):  # its code is in the block
        return
    if isinstance(small.names, cst.ImportStar):
        plain[f"from {module} import *"] = None
        return
    names = named.setdefault(module, {})
    for alias in small.names:
        names[code(alias).rstrip(", ")] = None


def _within(module: str, packages: frozenset[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


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
