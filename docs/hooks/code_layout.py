"""mkdocs hook: the package tree, read from the source.

A page that holds the line ``<!-- code-layout -->`` gets, in its place, the packages
of ``src/ablagen`` in the order of the pipeline, each module with the first line of
its docstring, so the map cannot drift from the code.
"""

from __future__ import annotations

import ast
from pathlib import Path

MARKER = "<!-- code-layout -->"
SRC = Path(__file__).resolve().parents[2] / "src" / "ablagen"

#: the pipeline's stages first, then what they share; a package missing here is
#: listed at the end, so a new one still shows up
ORDER = (
    "cli", "analyze", "generate", "source", "data", "ablate", "perturb",
    "orchestrate", "knockout_engine", "screen", "rank", "arms", "prune", "sweep",
    "report", "track", "study", "core",
)  # fmt: skip


def summary(path: Path) -> str:
    """The first line of a module's docstring ("" if it has none)."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def packages() -> list[Path]:
    found = [p.parent for p in SRC.glob("*/__init__.py")]
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(found, key=lambda p: (rank.get(p.name, len(ORDER)), p.name))


def layout() -> str:
    out = []
    for package in packages():
        out.append(f"### `ablagen.{package.name}`\n")
        out.append(summary(package / "__init__.py") + "\n")
        out.append("| module | what it holds |\n|---|---|")
        for module in sorted(package.glob("*.py")):
            if module.name != "__init__.py":
                text = summary(module).replace("|", "\\|")
                out.append(f"| `{module.stem}` | {text} |")
        out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, **_: object) -> str:
    return markdown.replace(MARKER, layout()) if MARKER in markdown else markdown
