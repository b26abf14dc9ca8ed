"""Import statements gathered from a rendered script and merged into one block.

Templates, embedded library code and the model's own source each import what
they use, wherever they sit in the script. :func:`split_imports` takes a chunk's
top-level imports out (a gather step: the chunk minus its imports, and the
imports as :class:`Imports`); :func:`import_block` writes the union once, at the
top, the way isort would: ``__future__`` first, then the standard library, then
everything else, each sorted, one ``from`` line per module.
"""

from __future__ import annotations

import functools
import re
import sys
from dataclasses import dataclass

import libcst as cst

_code = cst.Module(body=[]).code_for_node
#: a line that may start a top-level import (a cheap test before parsing)
TOP_LEVEL_IMPORT = re.compile(r"^(?:import|from)\s", re.MULTILINE)


@dataclass(frozen=True)
class Imports:
    """What a chunk imports: ``import x [as y]`` lines and ``from m import n`` names."""

    plain: tuple[str, ...] = ()  # "import x", "import x.y as z"
    named: tuple[tuple[str, str], ...] = ()  # ("m", "n"), ("m", "n as k")

    def __or__(self, other: Imports) -> Imports:
        return Imports(
            tuple(dict.fromkeys(self.plain + other.plain)),
            tuple(dict.fromkeys(self.named + other.named)),
        )

    def bound_names(self) -> frozenset[str]:
        """The names these imports bind in the module (``import a.b`` binds ``a``)."""
        names = {line.split()[-1].split(".")[0] for line in self.plain}
        names |= {name.split()[-1] for _, name in self.named}
        return frozenset(names)


@functools.lru_cache(maxsize=4096)
def split_imports(code: str) -> tuple[Imports, str]:
    """``code``'s top-level import statements, and ``code`` without them.

    Comments and blank lines above a removed import move to the next statement,
    so a section's header comment stays where it was. Relative imports and
    ``from m import *`` stay in place.
    """
    if not TOP_LEVEL_IMPORT.search(code):  # most variant sections: no parse
        return Imports(), code
    module = cst.parse_module(code)
    plain: list[str] = []
    named: list[tuple[str, str]] = []
    kept: list[cst.BaseStatement] = []
    carried: list[cst.EmptyLine] = []
    for statement in module.body:
        if _hoistable(statement):
            for small in statement.body:  # type: ignore[attr-defined]
                _gather(small, plain, named)
            carried.extend(statement.leading_lines)
            continue
        if carried:
            statement = statement.with_changes(
                leading_lines=[*carried, *statement.leading_lines]
            )
            carried = []
        kept.append(statement)
    footer = [*carried, *module.footer]
    rest = module.with_changes(body=kept, footer=footer).code
    return Imports(tuple(dict.fromkeys(plain)), tuple(dict.fromkeys(named))), rest


def import_block(imports: Imports) -> str:
    """The imports as isort writes them (black wraps long ``from`` lines); an
    ``import a.b as b`` is left out where ``from a import b`` binds the same."""
    groups: dict[int, list[str]] = {0: [], 1: [], 2: []}
    named = {_from_binding(module, name) for module, name in imports.named}
    plain = [line for line in imports.plain if _plain_binding(line) not in named]
    for line in sorted(plain, key=lambda line: line.split()[1]):
        groups[_group(line.split()[1])].append(line)
    modules: dict[str, list[str]] = {}
    for module, name in imports.named:
        modules.setdefault(module, []).append(name)
    for module in sorted(modules):
        names = ", ".join(sorted(modules[module], key=str.lower))
        groups[_group(module)].append(f"from {module} import {names}")
    blocks = ["\n".join(lines) for lines in groups.values() if lines]
    return "\n\n".join(blocks) + "\n" if blocks else ""


def _from_binding(module: str, name: str) -> tuple[str, str]:
    """(bound name, imported object) of ``from module import name [as alias]``."""
    words = name.split()
    return words[-1], f"{module}.{words[0]}"


def _plain_binding(line: str) -> tuple[str, str] | None:
    """(bound name, imported object) of ``import a.b as c``; None without ``as``."""
    words = line.split()
    return (words[3], words[1]) if len(words) == 4 else None


def _group(module: str) -> int:
    """0: ``__future__``, 1: the standard library, 2: everything else."""
    top = module.split(".")[0]
    if top == "__future__":
        return 0
    return 1 if top in sys.stdlib_module_names else 2


def _hoistable(statement: cst.BaseStatement) -> bool:
    if not isinstance(statement, cst.SimpleStatementLine):
        return False
    return all(
        isinstance(small, cst.Import)
        or (
            isinstance(small, cst.ImportFrom)
            and not small.relative
            and not isinstance(small.names, cst.ImportStar)
        )
        for small in statement.body
    )


def _gather(
    small: cst.BaseSmallStatement,
    plain: list[str],
    named: list[tuple[str, str]],
) -> None:
    if isinstance(small, cst.Import):
        plain.extend(f"import {_alias(alias)}" for alias in small.names)
        return
    assert isinstance(small, cst.ImportFrom) and small.module is not None
    module = _code(small.module)
    assert not isinstance(small.names, cst.ImportStar)
    named.extend((module, _alias(alias)) for alias in small.names)


def _alias(alias: cst.ImportAlias) -> str:
    name = _code(alias.name)
    if alias.asname is None:
        return name
    return f"{name} as {_code(alias.asname.name)}"
