"""The README and the docs site say what the code does.

The README is the front door: short, its links resolve, its command table names only
commands and options the CLI has, its test command is the one CI runs, and its
baseline-to-variant diff is the committed study's. The reliability page holds the
fault matrix exactly as the fault suite defines it. (`mkdocs build --strict` in
.ci/run checks the site's own links and anchors.)
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import typer

from ablagen.cli import app
from faults.matrix import markdown_table

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def _fenced(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_readme_is_a_front_door_of_at_most_300_lines() -> None:
    assert len(README.splitlines()) <= 300


def test_readme_links_resolve() -> None:
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line[3:].lower()).replace(" ", "-")
        for line in README.splitlines()
        if line.startswith("## ")
    }
    for target in re.findall(r"\]\(([^)\s]+)\)", README):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        if path:
            assert (ROOT / path).exists(), f"README links to missing {path}"
        else:
            assert anchor in anchors, f"README links to missing #{anchor}"


def test_readme_command_table_names_real_commands_and_options() -> None:
    commands = typer.main.get_command(app).commands
    rows = [
        line
        for line in _section(README, "The command line").splitlines()
        if line.startswith("| `ablagen ")
    ]
    # (the reverse: docs/reference/cli.md is generated from the CLI, every command)
    assert {row.split()[2].rstrip("`") for row in rows} <= set(commands)
    for row in rows:
        usage = row.split("|")[1]
        name = usage.split()[1].rstrip("`")
        known = {
            opt
            for param in commands[name].params
            for opt in (*param.opts, *param.secondary_opts)
        }
        for option in re.findall(r"--[a-z][a-z-]*", usage):
            assert option in known, f"README: ablagen {name} has no {option}"


def test_readme_test_command_is_the_one_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    setup = _fenced(_section(README, "Set up"), "bash")[0]
    test_line = next(line for line in setup.splitlines() if "pytest" in line)
    extras = re.search(r'pip install -e "(\.\[[a-z,]+\])"', test_line).group(1)
    assert f'-e "{extras}"' in ci
    pytest_command = test_line.split("&& ")[-1]
    assert any(line.strip() == pytest_command for line in ci.splitlines())


def test_readme_diff_is_the_committed_studys() -> None:
    """The README's diff is the committed study's own, in order (headers and the
    lines that name the script left out)."""
    study = ROOT / "generated" / "digits_cnn"
    baseline = (study / "baseline.py").read_text().splitlines()
    variant = (study / "conv2__zero.py").read_text().splitlines()
    actual = [
        line
        for line in difflib.unified_diff(baseline, variant, lineterm="", n=3)
        if not line.startswith(("---", "+++", "@@"))
    ]
    (diff,) = _fenced(README, "diff")
    shown = diff.splitlines()
    assert shown and all(line[0] in "+- " for line in shown)
    remaining = iter(actual)
    for line in shown:  # a subsequence of the real diff
        assert any(line == real for real in remaining), f"README's diff: {line!r}"
    header = set(baseline[: baseline.index('"""', 1) + 1]) | set(
        variant[: variant.index('"""', 1) + 1]
    )
    changed = [line for line in actual if line[0] in "+-" and line[1:] not in header]
    assert [line for line in shown if line in changed] == changed  # all of the code


def test_reliability_page_holds_the_fault_matrix() -> None:
    page = (ROOT / "docs" / "guide" / "reliability.md").read_text()
    assert markdown_table() in page
