"""Render a script from its context, then format it with black, section by section.

The top template separates its includes with ``# ablagen:section`` lines. Each
section is formatted on its own and cached by content, so the sections every
variant shares (model, data, optimizer, loop) are formatted once per study, not
once per script. Sections are joined with the blank lines black itself would put
there, so the whole file passes ``black --check``.
"""

from __future__ import annotations

import ast
import functools
import operator
import os
import re
import traceback
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import black
import jinja2
import libcst as cst

from ablagen.generate.context import BUILD_MARK, ScriptContext
from ablagen.generate.env import TOP_TEMPLATE
from ablagen.generate.names import (
    BUILTINS,
    Unrenamable,
    binding_counts,
    bindings,
    clashing_names,
    fresh_names,
    identifiers,
    rename_globals,
)
from ablagen.generate.by_shape import format_by_shape
from ablagen.core.errors import ModelFileError, TemplateError
from ablagen.source.imports import Imports, import_block, split_imports

SECTION_MARK = "# ablagen:section"
#: a marker line; an include that renders nothing leaves two markers back to back
SECTION_SPLIT = re.compile(rf"^{SECTION_MARK}$\n?", re.MULTILINE)
#: a section's banner (a ``# %%`` title line, the cell marker of VS Code, Jupytext,
#: Spyder and PyCharm, plus any comment lines under it) sits right above its first
#: statement, as black allows: the blank lines black would keep there only lengthen it
BANNER_GAP = re.compile(r"^(# %% [^\n]*\n(?:#[^\n]*\n)*)\n\n(?=\S)", re.MULTILINE)
BLACK_MODE = black.Mode(target_versions={black.TargetVersion.PY310}, line_length=88)
#: variants whose sections differ only in simple literals share one black call
#: (generate.by_shape); ABLAGEN_FORMAT_BY_SHAPE=0 formats every section itself (the
#: generation benchmark compares the two)
BY_SHAPE = os.environ.get("ABLAGEN_FORMAT_BY_SHAPE", "1") != "0"


def _black(text: str) -> str:
    return black.format_str(text, mode=BLACK_MODE)


@dataclass(frozen=True)
class _Section:
    text: str  # black-formatted, no trailing blank lines, ends with one newline
    starts_with_def: (
        bool  # first statement is a def / class (comments before it allowed)
    )
    ends_tight: bool  # last statement is the module docstring or an import
    is_docstring: bool  # the section is the module docstring alone


def render_script(env: jinja2.Environment, ctx: ScriptContext) -> str:
    """The script of ``ctx``: rendered, imports hoisted into one block, formatted."""
    raw = render_raw(env, ctx)
    sections = [s for s in SECTION_SPLIT.split(raw) if s.strip()]
    try:
        sections = _give_way(ctx, sections)
        sections = [s.replace(BUILD_MARK, ctx.model.expression) for s in sections]
        gathered = [split_imports(section) for section in sections]
        imports = functools.reduce(operator.or_, (i for i, _ in gathered), Imports())
        formatted = [_format_section(rest) for _, rest in gathered if rest.strip()]
        block = import_block(imports)
        if block:  # after the module docstring, else first
            at = 1 if formatted and formatted[0].is_docstring else 0
            formatted.insert(at, _format_section(block))
    except (black.InvalidInput, cst.ParserSyntaxError, SyntaxError) as exc:
        raise TemplateError(
            f"the rendered {ctx.script_name} is not valid Python ({str(exc).splitlines()[0]})",
            "fix the template that produced it",
        ) from exc
    out = formatted[0].text
    for prev, sec in zip(formatted, formatted[1:]):
        blank = "\n" if prev.ends_tight and not sec.starts_with_def else "\n\n"
        out += blank + sec.text
    return out


def _give_way(ctx: ScriptContext, sections: list[str]) -> list[str]:
    """``sections`` with the script's own top-level names that the model file binds
    too renamed (``train`` -> ``train_``), so the model's source stays as written.

    The renames depend only on the model file's names and the template's, so every
    script of a study renames alike and variants still differ only in their
    ablation section. A name the script cannot rename is refused in one line.
    """
    source = ctx.model.source.strip()
    ours = [i for i, s in enumerate(sections) if not (source and source in s)]
    if len(ours) == len(sections):  # a template without the model's source
        return sections
    model = bindings(ctx.model.source)
    beside = sum(  # the template's own names next to the source (new_model)
        (binding_counts(s) for i, s in enumerate(sections) if i not in ours), Counter()
    ) - binding_counts(ctx.model.source)
    if clash := sorted(beside.keys() & model.keys()):
        raise ModelFileError(
            f"{ctx.model.display} defines {', '.join(clash)}, which {ctx.script_name} "
            "defines next to the model's source",
            "rename it in the model file",
        )
    script = _merged((sections[i] for i in ours), model.keys())
    builtins = model.keys() & BUILTINS - script.keys()
    used: frozenset[str] = frozenset()
    if builtins:  # the names our sections read (a parse of each: only then)
        used = used.union(*(identifiers(sections[i]) for i in ours))
    if shadowed := sorted(builtins & used):
        raise ModelFileError(
            f"{ctx.model.display} redefines the builtin {', '.join(shadowed)}, "
            f"which {ctx.script_name} uses",
            "rename it in the model file",
        )
    clash = clashing_names(model, script)
    if not clash:
        return sections
    used = frozenset().union(*(identifiers(sections[i]) for i in ours))
    renames = fresh_names(clash, identifiers(ctx.model.source) | used)
    renamed = list(sections)
    try:
        for i in ours:
            renamed[i] = rename_globals(sections[i], renames)
    except Unrenamable as exc:
        raise ModelFileError(
            f"{ctx.model.display} defines {exc}, which {ctx.script_name} imports "
            f"as a package (`import {exc}.…`)",
            "rename it in the model file",
        ) from None
    left = clashing_names(model, _merged((renamed[i] for i in ours), model.keys()))
    if left:  # a user template put its own code in the model's section
        raise ModelFileError(
            f"{ctx.model.display} defines {', '.join(sorted(left))}, which "
            f"{ctx.script_name} defines too, next to the model's source",
            "rename them in the model file, or move that code out of model.py.j2",
        )
    return renamed


def _merged(sections: Iterable[str], names: Iterable[str]) -> dict[str, frozenset[str]]:
    """What the ``sections`` bind each of ``names`` to, the ones they bind."""
    names = frozenset(names)
    merged: dict[str, frozenset[str]] = {}
    for section in sections:
        bound = bindings(section)
        for name in names & bound.keys():
            merged[name] = merged.get(name, frozenset()) | bound[name]
    return merged


def render_raw(env: jinja2.Environment, ctx: ScriptContext) -> str:
    """The rendered text before formatting; template failures become TemplateError."""
    try:
        return env.get_template(TOP_TEMPLATE).render(ctx=ctx)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            f"template syntax error in {_name(exc.filename, exc.name)} line {exc.lineno}: {exc.message}",
            "fix the template",
        ) from exc
    except jinja2.TemplateNotFound as exc:
        raise TemplateError(
            f"template {exc.name!r} not found",
            "add it to --templates DIR or fix the include",
        ) from exc
    except jinja2.UndefinedError as exc:
        where = _template_frame(exc)
        raise TemplateError(
            f"undefined variable in {where}: {exc.message}",
            "use only the context fields listed in the README (ctx.*)",
        ) from exc


def _name(filename: str | None, name: str | None) -> str:
    return Path(filename).name if filename else (name or "<template>")


def _template_frame(exc: BaseException) -> str:
    """``file.py.j2 line N`` of the innermost template frame of a render error."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.endswith(".j2"):
            return f"{Path(frame.filename).name} line {frame.lineno}"
    return "a template"


@functools.lru_cache(maxsize=4096)
def _format_section(text: str) -> _Section:
    """Black-format one section; shared sections hit the cache after the first script."""
    text = format_by_shape(text, _black) if BY_SHAPE else _black(text)
    formatted = BANNER_GAP.sub(r"\1", text)
    body = ast.parse(formatted).body
    first, last = (body[0], body[-1]) if body else (None, None)
    is_docstring = (
        isinstance(last, ast.Expr)
        and isinstance(getattr(last, "value", None), ast.Constant)
        and len(body) == 1
    )
    return _Section(
        text=formatted.rstrip("\n") + "\n",
        starts_with_def=isinstance(
            first, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        ),
        ends_tight=is_docstring or isinstance(last, (ast.Import, ast.ImportFrom)),
        is_docstring=is_docstring,
    )
