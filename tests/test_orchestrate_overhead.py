"""The local pool's per-run savings keep what a run sees and what is recorded.

* The memory watch reads PSS only when it can matter (RSS is an upper bound):
  the kill decision is the one reading PSS at every sample gives.
* A run's exit skips torch.library's in-process finalizers the worker inherited,
  and runs every exit handler the script registers, as ``python script.py`` does.
* The workers preload the submodules of preloaded packages the scripts import
  inside functions (``sklearn.datasets``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
from conftest import EXAMPLES
from conftest_orchestrate import script_name, write_manifest
from test_orchestrate_prestart import _worker_children, spied  # noqa: F401

from ablagen.orchestrate import ResultStore, RunOptions, run_study, worker
from ablagen.orchestrate.local import WarmStart, preload_modules

pytestmark = pytest.mark.timeout(120)

MB = 1 << 20


class _FakeProc:
    """One run's memory over time: ``(rss, pss)`` per sample, a clock per sample."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, step_s: float) -> None:
        self.rss = self.pss = 0
        self.now = 1000.0
        self.step_s = step_s
        self.pss_reads = 0
        monkeypatch.setattr(worker, "_descendants", lambda pid: [pid])
        monkeypatch.setattr(worker, "_rss", lambda pid: self.rss)
        monkeypatch.setattr(worker, "_pss", self._read_pss)
        monkeypatch.setattr(worker.time, "monotonic", lambda: self.now)

    def _read_pss(self, pid: int) -> int:
        self.pss_reads += 1
        return self.pss

    def tick(self, rss: int, pss: int) -> None:
        self.rss, self.pss = rss, pss
        self.now += self.step_s


def _reference(samples: list[tuple[int, int]], limit: int | None) -> list[bool]:
    """The old rule: PSS read at every sample; over once a sample passes the limit."""
    over, seen = False, []
    for _, pss in samples:
        over = over or (limit is not None and pss > limit)
        seen.append(over)
    return seen


@pytest.mark.parametrize("seed", range(20))
def test_the_kill_decision_is_the_one_reading_pss_every_time(
    monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    rng = random.Random(seed)
    limit = rng.choice([None, 200 * MB, 400 * MB])
    samples = []
    pss = rng.randrange(50, 150) * MB
    for _ in range(60):  # grows, shrinks, stops sharing pages: RSS >= PSS always
        pss = max(10 * MB, pss + rng.randrange(-30, 40) * MB)
        samples.append((pss + rng.randrange(0, 200) * MB, pss))
    fake = _FakeProc(monkeypatch, step_s=0.1)
    watch = worker._Watch(1, limit)
    got = []
    for rss, pss in samples:
        fake.tick(rss, pss)
        watch.sample()
        got.append(watch.over)
    assert got == _reference(samples, limit)
    assert watch.reads == fake.pss_reads <= len(samples)


def test_pss_is_read_on_growth_and_at_least_every_half_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = _FakeProc(monkeypatch, step_s=0.1)
    watch = worker._Watch(1, None)
    # the first sample reads; then RSS and PSS grow together: every growth is read
    for mb in (300, 310, 350, 400):
        fake.tick(mb * MB, (mb - 150) * MB)
        watch.sample()
    assert fake.pss_reads == 4 and watch.peak == 250 * MB
    # RSS flat, PSS rising (pages no longer shared): caught within PSS_EVERY_S
    reads = fake.pss_reads
    for extra in range(1, 11):
        fake.tick(400 * MB, (250 + extra) * MB)
        watch.sample()
    assert fake.pss_reads - reads == 2  # at 0.5 s and 1.0 s, not at every sample
    assert watch.peak == 260 * MB
    assert worker.PSS_EVERY_S == 0.5


def test_the_watch_polls_faster_near_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeProc(monkeypatch, step_s=0.1)
    watch = worker._Watch(1, 500 * MB)
    fake.tick(200 * MB, 100 * MB)
    watch.sample()
    assert watch.period() == worker.POLL_S
    fake.tick(260 * MB, 100 * MB)  # RSS past half the limit: PSS may follow
    watch.sample()
    assert watch.period() == worker.POLL_NEAR_S and not watch.over
    fake.tick(600 * MB, 501 * MB)
    watch.sample()
    assert watch.over and watch.peak == 501 * MB


def test_the_watch_reads_a_real_process() -> None:
    """RSS is an upper bound of PSS on this kernel (what the gating relies on)."""
    if not Path("/proc/self/smaps_rollup").exists():
        pytest.skip("needs /proc/PID/smaps_rollup")
    code = "import sys; b = bytearray(50_000_000); print('ready', flush=True); sys.stdin.read()"
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout.readline() == b"ready\n"  # its memory stays as it is
        watch = worker._Watch(child.pid, None)
        for _ in range(3):
            watch.sample()
        assert 50_000_000 < watch.peak <= watch.rss
        assert watch.reads >= 1
    finally:
        child.communicate(b"")


def test_only_torch_library_finalizers_are_dropped() -> None:
    pytest.importorskip("torch")
    import torch.library

    lib = torch.library.Library("ablagen_test_overhead", "DEF")
    ours = weakref.finalize(lib, lambda: None)
    try:
        registry = list(weakref.finalize._registry)
        torch_lib = [
            f
            for f in registry
            if f.peek() and f.peek()[1] is torch.library._del_library
        ]
        assert torch_lib and all(f.atexit for f in torch_lib)
        worker._drop_inherited_finalizers()
        assert not any(f.atexit for f in torch_lib)
        assert ours.atexit  # anything else still runs at exit
    finally:
        for f in torch_lib:
            f.atexit = True
        ours.detach()


EXIT_SCRIPT = '''"""Leaves a file from each kind of exit handler."""
import argparse
import atexit
import json
import os
import weakref

import torch

parser = argparse.ArgumentParser()
for flag in ("--epochs", "--seed", "--device"):
    parser.add_argument(flag)
parser.add_argument("--out")
args = parser.parse_args()


def mark(name):
    with open(os.path.join(MARKS, f"{name}-{args.seed}"), "w") as fh:
        fh.write(name)


class Box:
    pass


MARKS = os.environ.get("MARKS", os.getcwd())
box = Box()
atexit.register(mark, "atexit")
weakref.finalize(box, mark, "finalize")
lib = torch.library.Library("ablagen_exit_script", "DEF")  # its own: unregisters
weakref.finalize(lib, mark, "library")
with open(args.out, "w") as fh:
    json.dump({"status": "ok", "final": {"val_acc": 1.0}}, fh)
'''


def test_a_run_runs_its_own_exit_handlers_as_python_does(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    study = tmp_path / "study"
    study.mkdir()
    (study / "baseline.py").write_text(EXIT_SCRIPT)
    write_manifest(study, ["baseline"])
    reference = tmp_path / "python"
    reference.mkdir()
    subprocess.run(
        [sys.executable, str(study / "baseline.py"), "--seed", "0", "--out", str(reference / "r.json")],
        cwd=reference, check=True,
    )  # fmt: skip
    summary = run_study(study, RunOptions(jobs=1, seeds=(0, 1)))
    assert summary.all_ok
    expected = sorted(p.name for p in reference.iterdir() if p.name != "r.json")
    assert expected == ["atexit-0", "finalize-0", "library-0"]
    for seed in (0, 1):  # every run, not only the worker's first
        marks = sorted(p.name for p in study.glob(f"*-{seed}"))
        assert marks == [name.replace("-0", f"-{seed}") for name in expected]


def test_preload_adds_function_level_submodules_of_preloaded_packages(
    tmp_path: Path,
) -> None:
    script = tmp_path / "s.py"
    script.write_text(
        "import torch\n"
        "def data():\n    from sklearn.datasets import load_digits\n"
        "def other():\n    import email.mime\n    import json.decoder\n"
        "def nested():\n    if True:\n        import torch.utils.data\n"
    )
    mods = preload_modules([script])
    assert "torch.utils.data" in mods
    if importlib.util.find_spec("sklearn") is not None:
        assert "sklearn.datasets" in mods
    # not a preloaded package's: left to the script (and learned after a run)
    assert not {"email.mime", "json.decoder"} & set(mods)
    assert preload_modules([script], base=()) == ["torch"]
    assert json.dumps(mods)  # plain names, as the zygote reads them


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the warm pool forks")
def test_the_sweep_command_starts_the_pool_first_and_leaves_none(
    tmp_path: Path, spied, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ablagen sweep`` starts the pool before it imports torch and generates: the
    pool is adopted (its zygote ends on its own); on bad input found after it
    started, it is killed: exit 2, one line, nothing written, no worker left."""
    from ablagen.cli import main

    out = tmp_path / "sweep"
    argv = ["sweep", str(EXAMPLES / "digits_cnn.py"), "--out", str(out), "-q"]
    assert main([*argv, "--arms", "plain,hybrid"]) == 2  # hybrid needs a study
    assert [z.returncode for _, z in spied] == [-9] and not out.exists()
    tiny = ["--arms", "plain", "--lrs", "0.01", "--seeds", "0", "--epochs", "1"]
    released, release = [], WarmStart.release

    def spy_release(warm, zygotes):
        released.append(warm)
        return release(warm, zygotes)

    monkeypatch.setattr(WarmStart, "release", spy_release)
    assert main([*argv, *tiny, "--jobs", "1", "--no-plots"]) == 0
    # adopted: released to the backend, which stops it (it ends on its own, or is
    # killed after 5 s on a loaded machine), not cancelled as the first one was
    assert released == [spied[1][0]] and spied[1][1].returncode is not None
    assert not spied[1][0].dir.exists() and _worker_children() == []
    with ResultStore(out, readonly=True) as store:
        assert [r.status for r in store.records()] == ["ok"]


def test_a_run_names_the_modules_it_imported_after_the_workers_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Learning walks only the entries after the worker's newest one: the same
    names a full comparison with the worker's modules gives, in import order."""
    site, study = tmp_path / "site", tmp_path / "study"
    for folder, names in ((site, ("lib_a", "lib_b")), (study, ("own",))):
        folder.mkdir()
        for name in names:
            (folder / f"{name}.py").write_text("")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(study))
    for name in ("lib_a", "lib_b", "own"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    before = set(sys.modules)
    last = next(reversed(sys.modules))
    import lib_b  # noqa: F401
    import own  # noqa: F401
    import lib_a  # noqa: F401

    out = tmp_path / "learned.json"
    worker._write_learned(str(out), last, (str(study),))
    reference = [n for n in sys.modules if n not in before and n != "own"]
    assert json.loads(out.read_text()) == reference == ["lib_b", "lib_a"]
    out.unlink()
    worker._write_learned(str(out), next(reversed(sys.modules)), (str(study),))
    assert not out.exists()  # nothing new: no file
    worker._write_learned(str(out), "no such module", (str(study),))
    assert not out.exists()  # the marker is gone: learn nothing rather than guess


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the warm pool forks")
def test_run_study_starts_its_pool_first_and_leaves_none(tmp_path: Path, spied) -> None:
    """Without a pool from the caller, run_study starts one before it reads the
    study: adopted when there are runs, killed on bad input or nothing to run."""
    from conftest_orchestrate import make_study

    from ablagen.core.errors import StudyError

    study = make_study(tmp_path / "s", {"baseline": "ok", "a:zero": "ok"})
    options = RunOptions(jobs=2, preload=())
    assert run_study(study, options).all_ok
    assert run_study(study, options).ran == 0  # all ok already
    with pytest.raises(StudyError):
        run_study(tmp_path / "missing", options)
    assert [z.returncode for _, z in spied] == [0, -9, -9]
    assert all(not warm.dir.exists() for warm, _ in spied)
    assert _worker_children() == []


ENDINGS = {
    "baseline": "import sys\nsys.exit(3)\n",  # its own code
    # killed: the signal is recorded
    "a:zero": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
    # a process the script forks returns through the worker's code with its own
    # code (5): the run's is the run process's own
    "b:zero": (
        "import os, sys\npid = os.fork()\nif pid == 0:\n    sys.exit(5)\n"
        "os.waitpid(pid, 0)\nsys.exit(4)\n"
    ),
}


def test_a_runs_exit_code_is_the_one_python_gives_however_it_ends(
    tmp_path: Path,
) -> None:
    """Exit codes as ``python script.py`` gives them, however the run ends, and no
    process left once the pool closes."""
    study = tmp_path / "study"
    study.mkdir()
    for variant, body in ENDINGS.items():
        (study / script_name(variant)).write_text(body)
    write_manifest(study, list(ENDINGS))
    expected = {}
    for variant in ENDINGS:
        script = study / script_name(variant)
        expected[variant] = subprocess.run([sys.executable, script]).returncode
    assert expected == {"baseline": 3, "a:zero": -9, "b:zero": 4}
    run_study(study, RunOptions(jobs=1, seeds=(0, 1)))
    with ResultStore(study, readonly=True) as store:
        got = {(r.variant_id, r.seed): r.exit_code for r in store.records()}
    assert got == {(v, s): code for v, code in expected.items() for s in (0, 1)}
    assert _worker_children() == []
