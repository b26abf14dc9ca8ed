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
import traceback
from dataclasses import dataclass
from pathlib import Path

import black
import jinja2

from ablagen.codegen.context import ScriptContext
from ablagen.codegen.env import TOP_TEMPLATE
from ablagen.errors import TemplateError

SECTION_MARK = "# ablagen:section"
BLACK_MODE = black.Mode(target_versions={black.TargetVersion.PY310}, line_length=88)


@dataclass(frozen=True)
class _Section:
    text: str  # black-formatted, no trailing blank lines, ends with one newline
    starts_with_def: (
        bool  # first statement is a def / class (comments before it allowed)
    )
    ends_tight: bool  # last statement is the module docstring or an import


def render_script(env: jinja2.Environment, ctx: ScriptContext) -> str:
    raw = render_raw(env, ctx)
    sections = [s for s in raw.split(f"\n{SECTION_MARK}\n") if s.strip()]
    try:
        formatted = [_format_section(s) for s in sections]
    except black.InvalidInput as exc:
        raise TemplateError(
            f"the rendered {ctx.script_name} is not valid Python ({str(exc).splitlines()[0]})",
            "fix the template that produced it",
        ) from exc
    out = formatted[0].text
    for prev, sec in zip(formatted, formatted[1:]):
        blank = "\n" if prev.ends_tight and not sec.starts_with_def else "\n\n"
        out += blank + sec.text
    return out


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
    formatted = black.format_str(text, mode=BLACK_MODE)
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
    )
