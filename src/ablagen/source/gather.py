"""Gather visitors: facts about a module's top level, no rewriting.

:func:`top_level_statements` lists each top-level statement with the names it
defines and the names it refers to; :func:`needed_statements` closes a set of
wanted names over those references.
"""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst
import libcst.matchers as m


@dataclass(frozen=True)
class TopLevel:
    index: int
    node: cst.CSTNode
    defines: frozenset[str]
    uses: frozenset[str]
    is_import: bool
    import_from: (
        str | None
    )  # module of a `from X import ...` (dots included), else None
    imported_modules: tuple[str, ...]  # modules of `import X, Y` statements


class _NameUses(cst.CSTVisitor):
    """Every bare name read anywhere below a node (an over-approximation: safe)."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def visit_Name(self, node: cst.Name) -> None:
        self.names.add(node.value)

    def visit_Attribute(self, node: cst.Attribute) -> bool:
        node.value.visit(self)  # `a.b.c` uses `a`, never `b` or `c`
        return False


def _uses(node: cst.CSTNode) -> frozenset[str]:
    visitor = _NameUses()
    node.visit(visitor)
    return frozenset(visitor.names)


def _dotted(node: cst.BaseExpression) -> str:
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        return f"{_dotted(node.value)}.{node.attr.value}"
    raise TypeError(f"not a dotted name: {node!r}")


def _targets(node: cst.BaseAssignTargetExpression | cst.BaseExpression) -> set[str]:
    if isinstance(node, cst.Name):
        return {node.value}
    if isinstance(node, (cst.Tuple, cst.List)):
        return {n for el in node.elements for n in _targets(el.value)}
    return set()


def is_main_guard(node: cst.CSTNode) -> bool:
    """``if __name__ == "__main__":`` at the top level."""
    return m.matches(
        node,
        m.If(
            test=m.Comparison(
                left=m.Name("__name__"),
                comparisons=[
                    m.ComparisonTarget(operator=m.Equal(), comparator=m.SimpleString())
                ],
            )
        ),
    )


def top_level_statements(module: cst.Module) -> list[TopLevel]:
    out: list[TopLevel] = []
    for index, stmt in enumerate(module.body):
        defines: set[str] = set()
        import_from: str | None = None
        imported: list[str] = []
        is_import = False
        uses = _uses(stmt)
        if isinstance(stmt, (cst.FunctionDef, cst.ClassDef)):
            defines.add(stmt.name.value)
            uses = (
                uses - {stmt.name.value} if isinstance(stmt, cst.FunctionDef) else uses
            )
        elif isinstance(stmt, cst.SimpleStatementLine):
            for small in stmt.body:
                if isinstance(small, cst.Import):
                    is_import = True
                    for alias in small.names:
                        full = _dotted(alias.name)
                        imported.append(full)
                        asname = alias.asname.name if alias.asname else None
                        defines.add(
                            asname.value
                            if isinstance(asname, cst.Name)
                            else full.split(".")[0]
                        )
                elif isinstance(small, cst.ImportFrom):
                    is_import = True
                    dots = "." * len(small.relative)
                    import_from = dots + (_dotted(small.module) if small.module else "")
                    if isinstance(small.names, cst.ImportStar):
                        defines.add("*")
                    else:
                        for alias in small.names:
                            asname = alias.asname.name if alias.asname else None
                            defines.add(
                                asname.value
                                if isinstance(asname, cst.Name)
                                else _dotted(alias.name)
                            )
                elif isinstance(small, cst.Assign):
                    for target in small.targets:
                        defines |= _targets(target.target)
                elif isinstance(small, (cst.AnnAssign, cst.AugAssign)):
                    defines |= _targets(small.target)
        out.append(
            TopLevel(
                index,
                stmt,
                frozenset(defines),
                uses,
                is_import,
                import_from,
                tuple(imported),
            )
        )
    return out


def needed_statements(statements: list[TopLevel], wanted: set[str]) -> list[TopLevel]:
    """The statements that define ``wanted`` and, transitively, everything they use."""
    providers: dict[str, list[TopLevel]] = {}
    for st in statements:
        for name in st.defines:
            providers.setdefault(name, []).append(st)
    keep: dict[int, TopLevel] = {}
    todo = list(wanted)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for st in providers.get(name, []) + providers.get("*", []):
            if st.index not in keep:
                keep[st.index] = st
                todo.extend(st.uses)
    return [keep[i] for i in sorted(keep)]
