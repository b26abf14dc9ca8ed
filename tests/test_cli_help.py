"""Issue #30.7: every command's --help at 80 columns reads whole: no option help cut
with an ellipsis, no "[default: ...]" note eaten as rich markup ("Runs at once ."),
no doubled negative flag (--no-no-patience), no panel title cut mid-word."""

from __future__ import annotations

import re

import pytest

from conftest import run_cli

COMMANDS = (
    "analyze",
    "generate",
    "run",
    "status",
    "rank",
    "hybrid",
    "study",
    "export",
    "sweep",
)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_at_80_columns_reads_whole(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("TERM", "dumb")
    code, out, _ = run_cli([command, "--help"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines and max(len(line) for line in lines) <= 80
    assert "…" not in out
    assert not re.search(r"\w \.\s", out), "a note vanished before a full stop"
    assert "--no-no-" not in out and "[default: no-no-" not in out
    for line in lines:
        if line.startswith("╭─"):
            assert re.fullmatch(r"╭─ .*\S ─+╮", line), line  # the title ends whole


def test_default_notes_in_help_texts_are_shown(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    _, out, _ = run_cli(["run", "--help"], capsys)
    assert "Runs at once [default: one per CPU core]." in out
    _, out, _ = run_cli(["sweep", "--help"], capsys)
    assert (
        "Sweep directory [default: STUDY/sweep, or studies/<model stem>/sweep]." in out
    )
    assert re.search(r"--no-patience\s+<bool>\s+Turn early stopping off\.", out)
    assert "[default: 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1]" in out
