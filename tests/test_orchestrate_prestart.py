"""The local pool started when the command starts (issue 20, ``local.WarmStart``):
adopted when it matches, killed otherwise, never left behind on bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest_orchestrate import make_study, make_torch_study

from ablagen.cli import main
from ablagen.orchestrate import ResultStore, RunOptions, run_study
from ablagen.orchestrate.local import WORKER, WarmStart, source_files, warm_pool

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _worker_children() -> list[int]:
    """Processes whose parent is this one and that run worker.py."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == os.getpid() and str(WORKER).encode() in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture
def spied(monkeypatch: pytest.MonkeyPatch) -> list[tuple[WarmStart, subprocess.Popen]]:
    """Every WarmStart begun, with its zygote process."""
    started: list[tuple[WarmStart, subprocess.Popen]] = []
    begin = WarmStart.begin.__func__

    def spy(cls, study_dir, options, sources=()):
        warm = begin(cls, study_dir, options, sources)
        if warm is not None:
            started.append((warm, warm.proc))
        return warm

    monkeypatch.setattr(WarmStart, "begin", classmethod(spy))
    return started


def test_a_prestarted_pool_runs_the_study_with_the_same_metrics(tmp_path: Path) -> None:
    """Adopted (its zygote forks the workers) and bit-identical to a pool started late."""
    cold_study = make_torch_study(tmp_path / "cold")
    warm_study = make_torch_study(tmp_path / "warm")
    options = RunOptions(jobs=2, seeds=(0, 1), epochs=1)
    cold = run_study(cold_study, options)
    with warm_pool(warm_study, options) as warm:
        assert warm is not None and warm.proc is not None
        zygote = warm.proc
        summary = run_study(warm_study, options, warm=warm)
        assert warm.proc is None  # released to the backend
        assert zygote.poll() is None  # kept for the next run_study
    assert zygote.poll() == 0  # ended on its own once the pool closed its workers
    assert not warm.dir.exists()
    assert summary.all_ok and cold.all_ok
    key = lambda r: (r.variant_id, r.seed)  # noqa: E731
    with (
        ResultStore(cold_study, readonly=True) as c,
        ResultStore(warm_study, readonly=True) as w,
    ):
        ran_cold, ran_warm = c.records(), w.records()
    assert cold.ran == summary.ran == len(ran_cold) == len(ran_warm) == 2
    for a, b in zip(sorted(ran_cold, key=key), sorted(ran_warm, key=key)):
        assert key(a) == key(b)
        for field in ("history", "final", "weights_sum", "params_total"):
            assert a.result[field] == b.result[field], field
    assert _worker_children() == []


@pytest.fixture
def pool_starts(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The command line of every worker zygote started (``subprocess.Popen`` of
    worker.py, counted on its way through: the processes are real)."""
    started: list[list[str]] = []
    popen = subprocess.Popen

    class Counted(popen):  # type: ignore[misc,valid-type]
        def __init__(self, args, *rest, **kwargs):
            if str(WORKER) in map(str, args):
                started.append(list(map(str, args)))
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", Counted)
    return started


@pytest.mark.slow
def test_one_pool_serves_run_study_calls_one_after_another(
    tmp_path: Path, pool_starts: list[list[str]]
) -> None:
    """As the study pipeline runs its stages: two run_study calls with one pool start
    it once, the second call's runs on the same worker processes, the metrics those
    of a pool per call; the pool ends when it is closed, not before."""
    cold_study = make_torch_study(tmp_path / "cold")
    shared_study = make_torch_study(tmp_path / "shared")
    options = RunOptions(jobs=2, epochs=1)
    for seeds in ((0, 1), (2,)):  # each call starts its own pool
        assert run_study(cold_study, replace(options, seeds=seeds)).all_ok
    assert len(pool_starts) == 2
    pool_starts.clear()
    with warm_pool(shared_study, options) as warm:
        assert warm is not None
        # released once the scripts exist: the workers fork while run_study plans
        warm.prepare([shared_study / "baseline.py"], shared_study)
        assert warm.proc is None and warm.workers is not None
        first = run_study(shared_study, replace(options, seeds=(0, 1)), warm=warm)
        pids = [w.pid for w in warm.workers]
        second = run_study(shared_study, replace(options, seeds=(2,)), warm=warm)
        assert [w.pid for w in warm.workers] == pids and None not in pids
        assert len(pool_starts) == 1
        assert len(_worker_children()) == 1  # the zygote, kept between the calls
    assert _worker_children() == []
    assert first.ran == 2 and second.ran == 1 and first.all_ok and second.all_ok
    key = lambda r: (r.variant_id, r.seed)  # noqa: E731
    with (
        ResultStore(cold_study, readonly=True) as c,
        ResultStore(shared_study, readonly=True) as w,
    ):
        ran_cold = sorted(c.records(), key=key)
        ran_shared = sorted(w.records(), key=key)
    assert (
        [key(r) for r in ran_cold]
        == [key(r) for r in ran_shared]
        == [
            ("baseline", 0),
            ("baseline", 1),
            ("baseline", 2),
        ]
    )
    for a, b in zip(ran_cold, ran_shared):
        for field in ("history", "final", "weights_sum", "params_total"):
            assert a.result[field] == b.result[field], field


def test_a_lost_worker_of_a_shared_pool_is_replaced_for_the_next_call(
    tmp_path: Path, pool_starts: list[list[str]]
) -> None:
    """A worker killed between two calls: the next call starts one in its place
    (one more zygote, one worker) and runs everything."""
    study = make_study(tmp_path / "s", {"baseline": "ok", "a:zero": "ok"})
    options = RunOptions(jobs=2)
    with warm_pool(study, options) as warm:
        assert warm is not None
        assert run_study(study, replace(options, seeds=(0,)), warm=warm).all_ok
        assert warm.workers is not None
        lost = warm.workers[0]
        os.kill(lost.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while lost.alive() and time.monotonic() < deadline:  # its socket's EOF
            time.sleep(0.01)
        second = run_study(study, replace(options, seeds=(1,)), warm=warm)
        assert second.all_ok and second.ran == 2
        assert len(pool_starts) == 2  # the pool, then one zygote for one worker
        assert len(pool_starts[1][2].split(",")) == 1
    assert _worker_children() == []


def test_a_pool_started_otherwise_is_killed_and_replaced(tmp_path: Path) -> None:
    """Started for other jobs than the backend's: killed at once, same outcome."""
    study = make_study(tmp_path / "s", {"baseline": "ok", "a:zero": "ok"})
    with warm_pool(study, RunOptions(jobs=2)) as warm:
        assert warm is not None
        zygote = warm.proc
        summary = run_study(study, RunOptions(jobs=1), warm=warm)
        assert zygote.returncode == -9 and warm.proc is None
    assert summary.all_ok and summary.ran == 2
    assert _worker_children() == []


def test_the_scripts_source_is_the_model_file_or_a_studys_baseline(
    tmp_path: Path,
) -> None:
    model = tmp_path / "net.py"
    model.write_text("import torch\n")
    study = make_study(tmp_path / "s", {"baseline": "ok"})
    assert source_files(model) == source_files(f"{model}:Net") == [model]
    assert source_files(study) == [study / "baseline.py"]
    assert source_files(tmp_path / "missing.py") == source_files(tmp_path) == []


class _Recording:
    """A zygote's stdin that keeps what was written to it."""

    def __init__(self, stream) -> None:
        self.stream, self.written = stream, b""

    def write(self, data: bytes) -> int:
        self.written += data
        return self.stream.write(data)

    def close(self) -> None:
        self.stream.close()


def test_the_model_files_imports_are_imported_before_release(tmp_path: Path) -> None:
    """The zygote imports what the model file imports (a data function's
    ``sklearn.datasets`` too) with the base modules; once released it is told only
    what is left, so it forks its workers at once."""
    model = tmp_path / "net.py"
    model.write_text(
        "import json\nimport torch\n\n\ndef build_data():\n"
        "    from sklearn.datasets import load_digits\n    return load_digits()\n"
    )
    study = make_torch_study(tmp_path / "s")
    options = RunOptions(jobs=1, seeds=(0,), epochs=1)
    with warm_pool(study, options, source_files(model)) as warm:
        assert warm is not None and warm.proc is not None
        started = [str(arg) for arg in warm.proc.args]
        assert started[-3:] == ["json", "sklearn.datasets", "-"]
        assert started[3 : 3 + len(warm.base)] == warm.base  # python worker.py FDS
        warm.proc.stdin = stdin = _Recording(warm.proc.stdin)
        summary = run_study(study, options, warm=warm)
    told = json.loads(stdin.written)
    assert "sklearn.datasets" not in told and "json" not in told
    assert summary.all_ok and summary.ran == 1


def test_not_started_for_ray_cuda_or_when_switched_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert WarmStart.begin(tmp_path, RunOptions(backend="ray")) is None
    assert WarmStart.begin(tmp_path, RunOptions(device="cuda")) is None
    monkeypatch.setenv("ABLAGEN_PRESTART", "0")
    assert WarmStart.begin(tmp_path, RunOptions()) is None


def test_bad_input_exits_2_and_leaves_no_worker(
    tmp_path: Path, spied, capsys: pytest.CaptureFixture[str]
) -> None:
    """The pool was started, then the --only id turned out unknown: one line, exit 2,
    the zygote killed before it forked a worker, its scratch folder gone."""
    study = make_study(tmp_path / "s", {"baseline": "ok"})
    assert main(["run", str(study), "--only", "nope", "-j", "2"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert len(spied) == 1
    warm, zygote = spied[0]
    assert zygote.returncode == -9 and not warm.dir.exists()
    assert _worker_children() == []
    assert not (study / "logs").exists()


def test_nothing_to_run_leaves_no_worker(tmp_path: Path, spied) -> None:
    study = make_study(tmp_path / "s", {"baseline": "ok"})
    assert main(["run", str(study), "-j", "1", "-q"]) == 0
    assert main(["run", str(study), "-j", "1", "-q"]) == 0  # all ok already
    assert [z.returncode for _, z in spied] == [0, -9]  # used, then unused: killed
    assert _worker_children() == []


def test_bad_input_from_a_shell_leaves_no_process(tmp_path: Path) -> None:
    """As a user runs it: exit 2 and no worker.py process whose cwd is the study."""
    study = make_study(tmp_path / "s", {"baseline": "ok"})
    done = subprocess.run(
        [sys.executable, "-m", "ablagen", "run", str(study), "--only", "nope"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    strays = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if str(WORKER).encode() in (entry / "cmdline").read_bytes() and (
                Path(os.readlink(entry / "cwd")) == study.resolve()
            ):
                strays.append(entry.name)
        except OSError:
            continue
    assert strays == []


@pytest.mark.parametrize("command", ["study", "sweep"])
def test_the_pool_starts_before_the_command_imports_torch(
    tmp_path: Path, command: str
) -> None:
    """``ablagen study`` and ``ablagen sweep`` start the pool first: its zygote
    imports torch while the command itself does."""
    model = Path(__file__).resolve().parents[1] / "examples" / "digits_cnn.py"
    spy = (
        "import os, sys\n"
        "from ablagen.orchestrate import local\n"
        "def begin(cls, *args, **kwargs):\n"
        "    print('torch imported:', 'torch' in sys.modules, flush=True)\n"
        "    os._exit(0)\n"
        "local.WarmStart.begin = classmethod(begin)\n"
        "from ablagen.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", spy, command, str(model), "--out", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.stdout == "torch imported: False\n", done.stderr
