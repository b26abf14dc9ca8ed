"""The CLI starts without torch: commands import what they need when they run."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, ablagen.cli; print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
