"""Top-level names of a script: who binds what, and the script's names giving way.

A generated script is the model file's own source plus the template's code, in one
module. Both bind top-level names; when both bind the same one, the later binding
silently replaces the earlier. :func:`bindings` says what each top-level name is
bound to (an import by the object it binds, so ``import torch.nn as nn`` and ``from
torch import nn`` are one name); :func:`clashing_names` finds the names the model
and the template bind differently; :func:`rename_globals` renames the template's
side (a deterministic ``name_``), its definitions and every reference to them,
leaving function locals, attributes and keywords of the same spelling alone. The
model's source is never touched: it is the user's code.
"""

from __future__ import annotations

import ast
import builtins
import functools
from collections import Counter
from collections.abc import Iterable, Mapping

import libcst as cst
from libcst.metadata import GlobalScope, MetadataWrapper, ScopeProvider

#: the binding of a name defined by a def, class or assignment (never equal to
#: another one: two definitions of a name are two objects)
DEFINED = "<defined>"
BUILTINS = frozenset(dir(builtins))


@functools.lru_cache(maxsize=4096)
def bindings(code: str) -> Mapping[str, frozenset[str]]:
    """Each top-level name ``code`` binds, with what it binds it to: the dotted path of
    the imported object (``torch.nn`` for both spellings of ``nn``) or :data:`DEFINED`.
    Statements under a top-level ``if``/``try`` count as top level."""
    found: dict[str, set[str]] = {}
    for statement in _top_level(ast.parse(code).body):
        for name, bound in _bound_by(statement):
            found.setdefault(name, set()).add(bound)
    return {name: frozenset(bound) for name, bound in found.items()}


def binding_counts(code: str) -> Counter[str]:
    """How many top-level bindings of each name ``code`` makes."""
    statements = _top_level(ast.parse(code).body)
    return Counter(name for st in statements for name, _ in _bound_by(st))


def _top_level(body: list[ast.stmt]) -> Iterable[ast.stmt]:
    for statement in body:
        if isinstance(statement, (ast.If, ast.Try, ast.With)):
            yield from _top_level(statement.body)
            yield from _top_level(getattr(statement, "orelse", []))
            for handler in getattr(statement, "handlers", []):
                yield from _top_level(handler.body)
        else:
            yield statement


def _bound_by(statement: ast.stmt) -> Iterable[tuple[str, str]]:
    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        yield statement.name, DEFINED
    elif isinstance(statement, ast.Import):
        for alias in statement.names:
            if alias.asname:
                yield alias.asname, alias.name
            else:  # `import a.b` binds `a`
                yield alias.name.split(".")[0], alias.name.split(".")[0]
    elif isinstance(statement, ast.ImportFrom):
        module = "." * statement.level + (statement.module or "")
        for alias in statement.names:
            if alias.name != "*":
                yield alias.asname or alias.name, f"{module}.{alias.name}"
    elif isinstance(statement, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For)):
        targets = getattr(statement, "targets", None) or [statement.target]
        for target in targets:
            for node in ast.walk(target):
                if isinstance(node, ast.Name):
                    yield node.id, DEFINED


def clashing_names(
    model: Mapping[str, frozenset[str]], script: Mapping[str, frozenset[str]]
) -> frozenset[str]:
    """The names both bind, unless both import the same one object under it."""
    return frozenset(
        name
        for name, bound in model.items()
        if name in script
        and not (bound == script[name] and len(bound) == 1 and DEFINED not in bound)
    )


def fresh_names(names: Iterable[str], taken: Iterable[str]) -> dict[str, str]:
    """``name -> name_`` (more underscores while taken), in a stable order."""
    used = set(taken)
    renames = {}
    for name in sorted(names):
        new = f"{name}_"
        while new in used:
            new += "_"
        used.add(new)
        renames[name] = new
    return renames


@functools.lru_cache(maxsize=1024)
def identifiers(code: str) -> frozenset[str]:
    """Every identifier ``code`` mentions (names, attributes, arguments)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.add(node.name)
        elif isinstance(node, ast.alias):
            found.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.arg):
            found.add(node.arg)
    return frozenset(found)


def rename_globals(code: str, renames: Mapping[str, str]) -> str:
    """``code`` with the module-level names ``renames`` names renamed, and every use.

    A name that resolves to a module-level binding (or to none in ``code``: it is
    bound by another part of the script) is renamed; a function's local, a class
    attribute, ``obj.name`` and ``f(name=...)`` are not. An import that binds one
    gets an ``as``: ``import json as json_``.
    """
    return _rename(code, tuple(sorted(renames.items())))


@functools.lru_cache(maxsize=4096)
def _rename(code: str, renames: tuple[tuple[str, str], ...]) -> str:
    mapping = dict(renames)
    if not mapping.keys() & identifiers(code):
        return code
    wrapper = MetadataWrapper(cst.parse_module(code))
    scopes = wrapper.resolve(ScopeProvider)
    targets = _GlobalUses(mapping, scopes)
    wrapper.visit(targets)
    return wrapper.visit(_Rename(mapping, targets.found)).code


class Unrenamable(Exception):
    """A name the script binds in a way that cannot take an ``as`` (``import a.b``)."""


class _GlobalUses(cst.CSTVisitor):
    """The Name nodes that are module-level bindings or uses of the renamed names."""

    def __init__(self, mapping: Mapping[str, str], scopes: Mapping) -> None:
        self.mapping = mapping
        self.scopes = scopes
        self.found: set[cst.Name] = set()
        self.skip: set[cst.Name] = set()

    def visit_Attribute(self, node: cst.Attribute) -> None:
        self.skip.add(node.attr)

    def visit_Arg(self, node: cst.Arg) -> None:
        if node.keyword is not None:
            self.skip.add(node.keyword)

    def visit_ImportAlias(self, node: cst.ImportAlias) -> bool:
        return False  # renamed through an `as` by _Rename

    def visit_Name(self, node: cst.Name) -> None:
        if node.value not in self.mapping or node in self.skip:
            return
        scope = self.scopes.get(node)
        if scope is None:
            return
        bound_in = {type(a.scope) for a in scope[node.value]}
        if not bound_in or bound_in == {GlobalScope}:
            self.found.add(node)


class _Rename(cst.CSTTransformer):
    def __init__(self, mapping: Mapping[str, str], targets: set[cst.Name]) -> None:
        self.mapping = mapping
        self.targets = targets
        self.depth = 0  # inside a def or class: its imports are local

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self.depth += 1

    def leave_FunctionDef(self, original, updated):  # type: ignore[no-untyped-def]
        self.depth -= 1
        return updated

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self.depth += 1

    def leave_ClassDef(self, original, updated):  # type: ignore[no-untyped-def]
        self.depth -= 1
        return updated

    def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.Name:
        if original in self.targets:
            return updated.with_changes(value=self.mapping[original.value])
        return updated

    def leave_ImportAlias(
        self, original: cst.ImportAlias, updated: cst.ImportAlias
    ) -> cst.ImportAlias:
        if self.depth:
            return updated
        bound = cst.Module(body=[]).code_for_node(
            original.asname.name if original.asname else original.name
        )
        if original.asname is None and "." in bound:
            bound = bound.split(".")[0]
            if (
                bound in self.mapping
            ):  # `import a.b` binds `a`, and `as` would bind `a.b`
                raise Unrenamable(bound)
        if bound not in self.mapping:
            return updated
        return updated.with_changes(
            asname=cst.AsName(name=cst.Name(self.mapping[bound]))
        )
