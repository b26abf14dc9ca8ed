"""The Jinja2 environment: user templates first, built-ins second, fail loudly.

``--templates DIR`` is prepended to the search path (any single include can be
overridden by file name), ``StrictUndefined`` turns a missing variable into an
error, and the file-system loaders refuse paths that escape their root.
"""

from __future__ import annotations

import functools
import json
import textwrap
from pathlib import Path

import jinja2

from ablagen.core.errors import TemplateError

TOP_TEMPLATE = "script.py.j2"


def builtin_templates_dir() -> Path:
    """``templates/`` inside the installed wheel, or at the repository root."""
    here = Path(__file__).resolve().parent.parent  # src/ablagen
    for candidate in (here / "templates", here.parent.parent / "templates"):
        if (candidate / TOP_TEMPLATE).is_file():
            return candidate
    raise TemplateError("ablagen's built-in templates are missing", "reinstall ablagen")


def py_literal(value: object) -> str:
    """A Python literal for a plain value (str, number, bool, None, tuple, list, dict)."""
    return repr(value)


def py_table(mapping: dict[str, object], width: int = 84) -> str:
    """A dict literal with one key a line and long list values wrapped. Put the
    statement between ``# fmt: off`` and ``# fmt: on``: black would give every
    number of a per-unit list a line of its own."""
    lines = ["{"]
    for key, value in mapping.items():
        head = f"    {json.dumps(key)}: "  # a double-quoted Python literal, as black writes
        if not isinstance(value, list):
            lines.append(f"{head}{value!r},")
            continue
        items = " ".join(f"{item!r}," for item in value)
        lines.append(head + "[")
        lines.extend(f"        {row}" for row in textwrap.wrap(items, width - 8))
        lines.append("    ],")
    lines.append("}")
    return "\n".join(lines)


def docstring_safe(value: object) -> str:
    """Text that can sit inside a triple-quoted docstring without ending it."""
    return str(value).replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


def comment_safe(value: object) -> str:
    """Text that stays on one comment line."""
    return " ".join(str(value).split())


def fail(message: str) -> None:
    """``{{ fail("...") }}`` in a template: stop rendering with that message."""
    raise TemplateError(message, "pass another option or override the template")


def make_environment(user_dir: Path | None = None) -> jinja2.Environment:
    if user_dir is not None and not user_dir.is_dir():
        raise TemplateError(
            f"templates directory {str(user_dir)!r} does not exist",
            "pass an existing directory to --templates",
        )
    return _environment(str(user_dir.resolve()) if user_dir else None)


@functools.lru_cache(maxsize=8)
def _environment(user_dir: str | None) -> jinja2.Environment:
    search = [user_dir] if user_dir else []
    search.append(str(builtin_templates_dir()))
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(search),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters.update(
        py=py_literal, py_table=py_table, docstring=docstring_safe, comment=comment_safe
    )
    env.globals["fail"] = fail
    return env
