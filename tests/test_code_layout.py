"""The package tree reads as the pipeline, one name per file.

``src/ablagen`` has no loose modules besides the entry points, no two files of the
same name (``__init__.py`` aside, and ``options.py`` for at most two options
dataclasses), and every module says in its docstring's first line what it holds:
the docs' code map (``docs/hooks/code_layout.py``) is built from those lines.
"""

from __future__ import annotations

import ast
import importlib.util
from collections import Counter
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "ablagen"
HOOK = SRC.parent.parent / "docs" / "hooks" / "code_layout.py"


def _hook():
    spec = importlib.util.spec_from_file_location("code_layout", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_loose_modules_beside_the_entry_points() -> None:
    loose = sorted(p.name for p in SRC.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py"]


def test_no_two_files_share_a_name() -> None:
    counts = Counter(p.name for p in SRC.rglob("*.py"))
    shared = {name: n for name, n in counts.items() if n > 1}
    assert shared.pop("__init__.py", 0) > 1
    assert shared.pop("options.py", 0) <= 2
    assert shared == {}, f"rename after what each file does: {shared}"


def test_every_module_says_what_it_holds() -> None:
    hook = _hook()
    silent = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if not hook.summary(p)]
    assert silent == ["__main__.py"]


def test_the_code_map_lists_every_package_in_pipeline_order() -> None:
    hook = _hook()
    listed = [p.name for p in hook.packages()]
    assert sorted(listed) == sorted(p.parent.name for p in SRC.glob("*/__init__.py"))
    assert [name for name in hook.ORDER if name in listed] == listed
    page = hook.on_page_markdown(
        (SRC.parent.parent / "docs/reference/code.md").read_text()
    )
    for module in SRC.rglob("*.py"):
        if module.name != "__init__.py" and module.parent != SRC:
            assert f"| `{module.stem}` |" in page, module
