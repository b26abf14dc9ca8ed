"""Embed a model file's source in a standalone script.

From the model file, keep what the wanted names (the model class or factory,
``build_data``) need: their definitions, the constants and helpers they use, and the
imports that bind names they use. Drop the module docstring, ``if __name__ ==
"__main__":`` blocks and everything unrelated. ``from sibling import a, b`` of a
module next to the model file is resolved by embedding ``a`` and ``b`` (and what
they need) from that file first, recursively.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import libcst as cst

from ablagen.core.errors import ModelFileError
from ablagen.source.gather import TopLevel, needed_statements, top_level_statements
from ablagen.source.transforms import (
    AtModelFile,
    DropMainGuard,
    KeepStatements,
    SetConstants,
)


@dataclass(frozen=True)
class EmbeddedSource:
    code: str  # the embedded code, sibling modules first, model file last
    names: frozenset[str]  # top-level names it defines
    files: tuple[Path, ...]  # every file it came from


def embed_model_source(
    path: Path,
    wanted: set[str],
    constants: dict[str, str] | None = None,
    located: Callable[[Path], str] | None = None,
) -> EmbeddedSource:
    """Extract what ``wanted`` needs from ``path`` (see the module docstring).

    ``constants`` gives top-level constants new values (Python source). The
    imports stay: the renderer merges every import of a script into one block.
    ``located`` gives a source file's path relative to the scripts: their
    ``__file__`` is rewritten to name it (see AtModelFile).
    """
    chunks: list[str] = []
    names: set[str] = set()
    files: list[Path] = []
    _embed(
        path.resolve(),
        wanted,
        constants or {},
        chunks,
        names,
        files,
        stack=(),
        located=located,
    )
    return EmbeddedSource(
        "\n\n".join(c.strip("\n") for c in chunks if c.strip()) + "\n",
        frozenset(names),
        tuple(files),
    )


def _parse(path: Path) -> cst.Module:
    try:
        return cst.parse_module(path.read_text(encoding="utf-8"))
    except (OSError, cst.ParserSyntaxError) as exc:
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ModelFileError(
            f"cannot parse {path}: {first_line}", "fix the file's syntax"
        ) from exc


def _embed(
    path: Path,
    wanted: set[str],
    constants: dict[str, str],
    chunks: list[str],
    names: set[str],
    files: list[Path],
    stack: tuple[Path, ...],
    located: Callable[[Path], str] | None = None,
) -> None:
    if path in stack:
        raise ModelFileError(
            f"circular import between {path.name} and {stack[-1].name}",
            "break the cycle",
        )
    module = _parse(path).visit(DropMainGuard())
    statements = top_level_statements(module)
    keep = needed_statements(statements, wanted)
    sibling_imports = [
        st for st in keep if st.is_import and _sibling(path, st) is not None
    ]
    here = {n for st in keep if st not in sibling_imports for n in st.defines}
    used = _used_names(keep)
    for st in sibling_imports:
        sibling = _sibling(path, st)
        assert sibling is not None
        if st.import_from is None or _imports_modules(path, st):
            raise ModelFileError(
                f"{path.name} imports its own module {sibling.stem!r} as a whole",
                f"import the names the model needs (`from {st.import_from or sibling.stem} "
                "import NAME`) so ablagen can embed them",
            )
        # `from blocks import *`: what the kept code uses and this file leaves undefined
        wanted_there = used - here if "*" in st.defines else set(st.defines) & used
        renamed = _renamed(st.node)  # `from mingpt.utils import CfgNode as CN`
        _embed(
            sibling,
            {renamed.get(n, n) for n in wanted_there},
            {},
            chunks,
            names,
            files,
            stack + (path,),
            located,
        )
        for alias in sorted(wanted_there & renamed.keys()):
            chunks.append(f"{alias} = {renamed[alias]}")
            names.add(alias)
    indices = {st.index for st in keep if st not in sibling_imports}
    kept = module.visit(KeepStatements(indices))
    if constants:
        kept = kept.visit(SetConstants(constants))
    if located is not None:
        at_file = AtModelFile(located(path))
        kept = kept.visit(at_file)
        if at_file.replaced:  # the renderer merges it with the script's own imports
            chunks.append("import os")
    chunks.append(kept.code)
    names.update(n for st in keep if st not in sibling_imports for n in st.defines)
    files.append(path)


def _used_names(statements: list[TopLevel]) -> set[str]:
    return {n for st in statements for n in st.uses} | {
        n for st in statements if not st.is_import for n in st.defines
    }


def _sibling(path: Path, st: TopLevel) -> Path | None:
    """The user's own file a top-level import refers to, if it is one: a module next to
    the model file (``from blocks import Block``), a package there (``from models
    import *``, ``from models.resnet import ResNet``) or a relative import inside one
    (``from .layers import ConvBN``)."""
    modules = (
        [st.import_from] if st.import_from is not None else list(st.imported_modules)
    )
    for mod in modules:
        dots = len(mod) - len(mod.lstrip("."))
        base = path.parent
        for _ in range(max(dots - 1, 0)):
            base = base.parent
        parts = [p for p in mod[dots:].split(".") if p]
        if not parts:  # `from . import x`: x is a module of this package
            return path.parent / "__init__.py"
        # absolute: beside the file, or above its package (minGPT's model.py says
        # `from mingpt.utils import CfgNode`, its folder the one the factory is in)
        for root in [base] if dots else _import_roots(path):
            for candidate in (root.joinpath(*parts[:-1], f"{parts[-1]}.py"),
                              root.joinpath(*parts, "__init__.py")):  # fmt: skip
                if candidate.is_file():
                    return candidate
        if dots:
            raise ModelFileError(
                f"{path.name}: the relative import `from {mod} import ...` names no file",
                "fix the import",
            )
    return None


def _renamed(node: cst.CSTNode) -> dict[str, str]:
    """``{alias: name}`` for each ``name as alias`` of a ``from X import ...``."""
    found: dict[str, str] = {}
    for small in getattr(node, "body", ()):
        if isinstance(small, cst.ImportFrom) and not isinstance(
            small.names, cst.ImportStar
        ):
            for alias in small.names:
                if alias.asname is not None and isinstance(alias.name, cst.Name):
                    found[cst.ensure_type(alias.asname.name, cst.Name).value] = (
                        alias.name.value
                    )
    return found


def _import_roots(path: Path) -> list[Path]:
    """Where an absolute import in ``path`` finds the user's own modules: its folder,
    then, for a module inside a package, the folder that holds the top package."""
    roots, top = [path.parent], path.parent
    while (top / "__init__.py").is_file() and top.parent != top:
        top = top.parent
    return roots + ([top] if top != path.parent else [])


def _imports_modules(path: Path, st: TopLevel) -> bool:
    """``from pkg import mod``: a name that is a module of the user's package."""
    if st.import_from is None:
        return True
    target = _sibling(path, st)
    if target is None or target.name != "__init__.py":
        return False
    return any(
        (target.parent / f"{name}.py").is_file() or (target.parent / name).is_dir()
        for name in st.defines
        if name != "*"
    )
