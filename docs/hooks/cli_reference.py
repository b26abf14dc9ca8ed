"""mkdocs hook: the command-line reference, read from the CLI itself.

A page that holds the line ``<!-- cli-reference -->`` gets, in its place, one
section per ``ablagen`` command with every argument and option as the code
defines them (names, help, defaults), so the reference cannot drift from the code.
"""

from __future__ import annotations

import re

MARKER = "<!-- cli-reference -->"


def _cell(text: str) -> str:
    text = re.sub(r"\\\[", "[", text or "")
    return " ".join(text.split()).replace("|", "\\|")


def _default(param) -> str:
    shown = getattr(param, "show_default", None)
    if isinstance(shown, str):
        return shown
    default = param.default
    if shown is False or default is None or default == () or callable(default):
        return ""
    if type(default).__name__.startswith("_"):  # a sentinel: no default
        return ""
    if default is False and not param.secondary_opts:
        return ""  # a plain flag, off unless given
    if isinstance(default, (list, tuple)):
        return ", ".join(str(value) for value in default)
    return str(default)


def _names(param) -> str:
    names = [*param.opts, *param.secondary_opts]
    if not names[0].startswith("-"):
        return f"`{param.name.upper()}`"
    return " / ".join(f"`{name}`" for name in names)


def reference() -> str:
    import typer

    from ablagen.cli import app

    group = typer.main.get_command(app)
    out = []
    for name, command in group.commands.items():
        out.append(f"## ablagen {name}\n")
        out.append(_cell(command.help or "") + "\n")
        args = " ".join(
            p.name.upper() for p in command.params if not p.opts[0].startswith("-")
        )
        out.append(f"```text\nablagen {name} [OPTIONS] {args}\n```\n")
        out.append("| argument or option | help | default |\n|---|---|---|")
        for param in command.params:
            if param.opts == ["--help"]:
                continue
            out.append(f"| {_names(param)} | {_cell(getattr(param, 'help', ''))} | {_cell(_default(param))} |")
        out.append("")
    return "\n".join(out)


def on_page_markdown(markdown, page, config, files):  # noqa: ARG001 - mkdocs' signature
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, reference())
    return markdown
