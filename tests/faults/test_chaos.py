"""The chaos soak's CI size (issue #24): 60 runs, the driver SIGKILLed 5 times,
3 pool processes killed, the disk full once; nothing lost, nothing run twice,
results bit-identical to an uninterrupted study, no orphan, an intact store.

``python benchmarks/chaos.py`` is the full soak (502 runs, 20 kills)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import chaos  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        not Path("/proc/self/stat").exists(), reason="needs Linux /proc"
    ),
]


def test_chaos_soak_loses_nothing(tmp_path: Path) -> None:
    report = chaos.soak(tmp_path, groups=25, kills=5, worker_kills=3, log=print)
    assert report.runs == 60 and report.driver_kills == 5
    assert report.disk_full in ("tmpfs", "hook")
    # the full disk stopped a session (exit 2, one line)
    assert report.disk_exit == 2, (report.exit_codes, report.errors)
    assert report.lost == 0
    assert report.duplicated == 0, report.duplicates
    assert report.differing == 0
    assert report.orphans == 0 and report.orphans_per_kill == [0] * 5
    assert report.leftover == 0
    assert report.integrity == "ok"
