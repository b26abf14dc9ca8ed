"""No process of a study outlives its orchestrator (issue #24).

A run forks a child and starts a python subprocess, then hangs. ``kill -9`` of
the orchestrator alone, or of its whole process group (``setsid ablagen run`` then
``kill -9 -PGID``), must leave no process of the study in /proc after 2 seconds:
not the zygote, the workers, their guards, the run, nor what the run started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest_orchestrate import counter, make_study, session_pids

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not Path("/proc/self/stat").exists(), reason="needs Linux /proc"
    ),
]


def wait_for(predicate, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def start(study: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ablagen", "run", str(study), "--jobs", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # setsid: its process group and session are its pid
        env=env,
    )


@pytest.mark.parametrize("target", ["orchestrator", "group"])
def test_kill_9_leaves_no_process_of_the_study(tmp_path: Path, target: str) -> None:
    study = make_study(tmp_path / "study", {"baseline": "family", "a:zero": "family"})
    env = dict(os.environ, ABLAGEN_PRESTART="0")
    proc = start(study, env)
    family = study / "counter.txt.family"
    # both runs forked their children: 2 runs x (run, child, subprocess) + pool + us
    assert wait_for(
        lambda: family.exists() and len(family.read_text().splitlines()) == 2, 60
    ), proc.poll()
    assert len(session_pids(proc.pid)) >= 6 + 2
    if target == "group":
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = time.monotonic()
    assert wait_for(lambda: not session_pids(proc.pid), 2.0), session_pids(proc.pid)
    assert time.monotonic() - killed <= 2.5


def test_a_pool_killed_while_it_imports_ends_too(tmp_path: Path) -> None:
    """The zygote imports torch for seconds before it forks; it dies with us."""
    study = make_study(tmp_path / "study", {"baseline": "ok"})
    proc = start(study)  # the pool starts at once and imports torch
    assert wait_for(lambda: len(session_pids(proc.pid)) >= 2, 30)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert wait_for(lambda: not session_pids(proc.pid), 2.0), session_pids(proc.pid)


def test_a_pool_process_killed_while_it_imports_is_replaced(tmp_path: Path) -> None:
    """Killing the zygote before it forks its workers costs a fresh start, not the
    session: `ablagen run` still runs everything (exit 0)."""
    study = make_study(tmp_path / "study", {"baseline": "ok", "a:zero": "ok"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "ablagen", "run", str(study), "--jobs", "2", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=dict(os.environ, ABLAGEN_PRESTART="0"),  # the zygote starts with the runs
    )

    def zygote() -> int | None:
        for pid in session_pids(proc.pid):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                ppid = int(
                    Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except (OSError, ValueError):
                continue
            if b"worker.py" in cmd and ppid == proc.pid:
                return pid
        return None

    assert wait_for(lambda: zygote() is not None, 60)
    os.kill(zygote(), signal.SIGKILL)  # torch is still importing: nothing forked yet
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert sorted(counter(study)) == ["a:zero 0", "baseline 0"]
