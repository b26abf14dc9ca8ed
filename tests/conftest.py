from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = Path(__file__).resolve().parent / "models"
EXAMPLES = ROOT / "examples"


@pytest.fixture
def models_dir() -> Path:
    return MODELS


def run_cli(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    from ablagen.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err
