"""Chaos soak of the local orchestrator (issue #24): kill everything, lose nothing.

A study of short runs (a tiny MLP, 1 epoch, 2 seeds; one script per neuron group)
is run twice: once without interruption (the reference), and once under faults:

- the driver (``ablagen run``, started with ``setsid``) is SIGKILLed at random
  moments, alternately alone and with its whole process group; every fifth kill
  lands while the pool is still importing torch;
- worker processes (the pool's zygote, workers, their guards, the runs they
  forked) are SIGKILLed at random;
- the disk fills up once: a small tmpfs holding the study is filled to the last
  byte (root), else a write hook makes every run fail with ``ENOSPC``.

After each fault ``ablagen run --retry-failed`` starts again, until the study is
done. Reported: runs lost (not ok at the end), runs executed to completion more
than once (the model file appends a line per completed run), results that differ
from the reference bit for bit (everything but times and memory), processes of a
killed driver's session still alive 2 s after the kill, SQLite's ``PRAGMA
integrity_check``, and the wall time against the reference. Goal: 0, 0, 0, 0, ok.

    python benchmarks/chaos.py                         # 502 runs, 20 kills
    python benchmarks/chaos.py --groups 25 --kills 5   # 60 runs (the CI test's size)

``tests/faults/test_chaos.py`` runs the small one and asserts the zeros.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

COUNTER_ENV = "ABLAGEN_CHAOS_COUNTER"  # completed runs append "variant seed" here
DISK_FULL_ENV = "ABLAGEN_CHAOS_DISK_FULL"  # while this file exists, runs hit ENOSPC
VOLATILE = ("wall_time_s", "samples_per_s", "peak_memory_bytes")  # not compared
SEEDS = "0,1"

MODEL = '''"""A tiny MLP for the chaos soak (benchmarks/chaos.py)."""

import atexit
import errno
import json
import os
import sys

import torch
from torch import nn

INPUT_SHAPE = (8,)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, WIDTH)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(WIDTH, 4)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def count_completion():
    """The soak's instrument: one line per run that wrote its result, with the
    result's status (a failed run runs again by design: only "ok" is a completion)."""
    path, argv = os.environ.get("COUNTER_ENV"), sys.argv
    if not (path and "--out" in argv):
        return
    try:
        with open(argv[argv.index("--out") + 1]) as fh:
            status = json.load(fh).get("status", "?")
    except (OSError, ValueError):
        return
    with open(path, "a") as fh:
        seed, sid = argv[argv.index("--seed") + 1], os.getsid(0)
        fh.write(f"{VARIANT} {seed} {status} session {sid} pid {os.getpid()}\\n")


def build_data():
    full = os.environ.get("DISK_FULL_ENV")
    if full and os.path.exists(full):  # the write hook: a full disk
        raise OSError(errno.ENOSPC, "No space left on device", full)
    atexit.register(count_completion)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(320, 8, generator=g)
    y = x[:, :4].argmax(dim=1)
    return x[:256], y[:256], x[256:], y[256:]
'''


@dataclass
class Report:
    runs: int = 0
    driver_kills: int = 0
    worker_kills: int = 0
    disk_full: str = "none"  # tmpfs | hook | none
    disk_exit: int | None = None  # the exit code of the session that met it
    sessions: int = 0
    lost: int = 0
    duplicated: int = 0
    differing: int = 0
    orphans: int = 0  # processes of killed drivers' sessions alive 2 s after the kill
    orphans_per_kill: list[int] = field(default_factory=list)
    leftover: int = 0  # processes of any session alive after the soak
    integrity: str = ""
    exit_codes: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # the sessions' stderr lines
    duplicates: list[str] = field(default_factory=list)  # "variant seed"
    failed_results: list[str] = field(default_factory=list)  # "variant seed status"
    reference_s: float = 0.0
    chaos_s: float = 0.0

    @property
    def clean(self) -> bool:
        return (
            self.lost == self.duplicated == self.differing == 0
            and self.orphans == self.leftover == 0
            and self.integrity == "ok"
        )


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes of session ``sid``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def make_study(work: Path, groups: int) -> Path:
    """The model file and its generated study (one script per neuron group)."""
    model = work / "chaos_mlp.py"
    text = MODEL.replace("WIDTH", str(max(groups, 8)))
    text = text.replace('"COUNTER_ENV"', repr(COUNTER_ENV))
    model.write_text(text.replace('"DISK_FULL_ENV"', repr(DISK_FULL_ENV)))
    study = work / "study"
    cmd = [sys.executable, "-m", "ablagen", "generate", str(model), "--out", str(study)]
    cmd += ["--kinds", "neurons", "--neuron-groups", str(groups), "--epochs", "1"]
    subprocess.run(cmd, check=True, capture_output=True)
    return study


def run_cmd(study: Path, jobs: int) -> list[str]:
    return [
        sys.executable, "-m", "ablagen", "run", str(study), "--jobs", str(jobs),
        "--seeds", SEEDS, "--retry-failed", "--quiet",
    ]  # fmt: skip


def ok_rows(study: Path) -> dict[tuple[str, int], dict]:
    """(variant, seed) -> result of every ok row."""
    rows = query(
        study, "SELECT variant_id, seed, result_json FROM runs WHERE status = 'ok'"
    )
    out = {}
    for variant, seed, text in rows:
        result = json.loads(text)
        for key in VOLATILE:
            result.pop(key, None)
        out[(variant, seed)] = result
    return out


def query(study: Path, sql: str) -> list[tuple]:
    """Rows of the study's store, read only ([] before it has a table)."""
    path = study / "results.sqlite"
    if not path.exists():
        return []
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        print(f"query: {exc}", file=sys.stderr)
        return []


def running_rows(study: Path) -> int:
    return len(query(study, "SELECT 1 FROM runs WHERE status = 'running'"))


@contextlib.contextmanager
def small_fs(where: Path, size: str = "64m"):
    """A tmpfs at ``where`` (root only); yields False where none can be mounted."""
    where.mkdir(parents=True, exist_ok=True)
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
    )
    try:
        yield made.returncode == 0
    finally:
        if made.returncode == 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path) -> None:
    """Write zeros to ``path`` until the filesystem is full."""
    with contextlib.suppress(OSError), open(path, "wb") as fh:
        while True:
            fh.write(b"\0" * (1 << 20))
            fh.flush()


class Chaos:
    def __init__(self, study: Path, jobs: int, rng: random.Random, report: Report):
        self.study, self.jobs, self.rng, self.report = study, jobs, rng, report
        self.env = dict(os.environ, OMP_NUM_THREADS="1")
        self.sessions: list[int] = []
        self.run_s = 0.5  # one run's wall time (set from the reference)
        self.errlog = study.parent.parent / "sessions.err"  # beside the tmpfs

    def start(self) -> subprocess.Popen[bytes]:
        with open(self.errlog, "ab") as err:
            proc = subprocess.Popen(
                run_cmd(self.study, self.jobs),
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        self.sessions.append(proc.pid)
        self.report.sessions += 1
        return proc

    def finish(self, proc: subprocess.Popen[bytes], timeout: float) -> int | None:
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self.report.exit_codes.append(code)
        return code

    def progress(self, proc: subprocess.Popen[bytes], per: int) -> None:
        """Wait until 1 to ``per`` more runs (at random) are stored in this session,
        then a random part of a run: the kill lands mid-run, spread over the study."""
        want = len(ok_rows(self.study)) + self.rng.randint(1, per)
        deadline = time.monotonic() + 300
        while len(ok_rows(self.study)) < want and proc.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        time.sleep(self.rng.uniform(0.0, self.run_s))

    def kill_driver(self, proc: subprocess.Popen[bytes], per: int, early: bool) -> None:
        """SIGKILL the driver (alone or with its group) at a random moment."""
        if early:  # while the pool imports torch
            time.sleep(self.rng.uniform(0.1, 1.5))
        else:
            self.progress(proc, per)
        group = self.report.driver_kills % 2 == 1
        with contextlib.suppress(OSError):
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        self.report.driver_kills += 1
        deadline = time.monotonic() + 2.0  # then whatever is left is an orphan
        while (left := session_pids(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.report.orphans_per_kill.append(len(left))
        self.report.orphans += len(left)
        kill_all(left)  # so the soak goes on; counted above

    def kill_worker(self, proc: subprocess.Popen[bytes], per: int) -> bool:
        """SIGKILL one random process the driver started (zygote, worker, guard, run)."""
        self.progress(proc, per)
        pool = [p for p in session_pids(proc.pid) if p != proc.pid]
        if not pool or proc.poll() is not None:
            return False
        with contextlib.suppress(OSError):
            os.kill(self.rng.choice(pool), signal.SIGKILL)
        self.report.worker_kills += 1
        return True


def soak(
    work: Path,
    groups: int = 246,
    kills: int = 20,
    worker_kills: int = 10,
    jobs: int = 2,
    seed: int = 0,
    disk: str = "auto",
    log=print,
) -> Report:
    """Run the soak in ``work``; returns the report (see the module docstring)."""
    rng = random.Random(seed)
    report = Report()
    ref_work = work / "reference"
    ref_work.mkdir(parents=True)
    study_ref = make_study(ref_work, groups)
    with small_fs(work / "fs") as mounted:
        if disk == "auto":
            disk = "tmpfs" if mounted else "hook"
        if disk == "tmpfs" and not mounted:
            raise SystemExit("cannot mount a tmpfs here (root only): use --disk hook")
        study = work / "fs" / "study"
        shutil.copytree(study_ref, study)
        counter_ref, counter = work / "reference.count", work / "chaos.count"
        report.disk_full = disk

        log(f"reference: {len(list(study_ref.glob('*.py')))} scripts x 2 seeds")
        env = dict(os.environ, OMP_NUM_THREADS="1", **{COUNTER_ENV: str(counter_ref)})
        began = time.monotonic()
        subprocess.run(run_cmd(study_ref, jobs), env=env, check=True)
        report.reference_s = time.monotonic() - began
        reference = ok_rows(study_ref)
        report.runs = len(reference)
        log(f"reference: {report.runs} runs in {report.reference_s:.1f} s")

        chaos = Chaos(study, jobs, rng, report)
        chaos.env[COUNTER_ENV] = str(counter)
        # runs stored between faults: 1 to `per`, about half the study in all
        per = max(2, report.runs // (kills + worker_kills + 2))
        chaos.run_s = jobs * report.reference_s / max(report.runs, 1)
        disk_at = kills // 2 if disk != "none" else -1
        began = time.monotonic()
        for index in range(kills):
            if index == disk_at:
                disk_fault(chaos, disk, log)
            proc = chaos.start()
            chaos.kill_driver(proc, per, early=index % 5 == 4)
            log(f"kill {index + 1}/{kills}: ok {len(ok_rows(study))}/{report.runs}")
        if disk_at >= kills:
            disk_fault(chaos, disk, log)
        while len(ok_rows(study)) < report.runs:
            if report.sessions > kills + worker_kills + 50:
                log("giving up: too many sessions")
                break
            proc = chaos.start()
            while report.worker_kills < worker_kills and chaos.kill_worker(proc, per):
                log(f"worker kill {report.worker_kills}/{worker_kills}")
            code = chaos.finish(proc, timeout=max(600.0, 5 * report.reference_s))
            if code is None:
                kill_all(session_pids(proc.pid))
                log("a session hung: killed")
            log(f"`ablagen run` exited {code}: ok {len(ok_rows(study))}/{report.runs}")
        report.chaos_s = time.monotonic() - began
        errors = chaos.errlog.read_text() if chaos.errlog.exists() else ""
        report.errors = sorted(set(errors.splitlines()))
        time.sleep(0.5)
        report.leftover = sum(len(session_pids(sid)) for sid in chaos.sessions)
        final = ok_rows(study)
        report.lost = report.runs - len(set(final) & set(reference))
        lines = counter.read_text().splitlines() if counter.exists() else []
        rows = [line.split() for line in lines]
        counts = Counter(" ".join(row[:2]) for row in rows if row[2] == "ok")
        report.duplicates = sorted(k for k, n in counts.items() if n > 1)
        report.failed_results = sorted(" ".join(row[:3]) for row in rows if row[2] != "ok")
        report.duplicated = len(report.duplicates)
        report.differing = sum(
            1 for key, result in reference.items() if final.get(key, result) != result
        )
        shutil.copytree(study, work / "chaos-study")  # the tmpfs goes next
        conn = sqlite3.connect(study / "results.sqlite")
        try:
            report.integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            conn.close()
    return report


def disk_fault(chaos: Chaos, disk: str, log) -> None:
    """One session meets a full disk; the next ones find room again."""
    study = chaos.study
    flag = study.parent / "full.flag"
    if disk == "tmpfs":  # once runs are finishing in this session
        before, deadline = len(ok_rows(study)), time.monotonic() + 120
        proc = chaos.start()
        while len(ok_rows(study)) == before and proc.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        fill(study.parent / "fill.bin")
    else:
        flag.write_text("full\n")
        chaos.env[DISK_FULL_ENV] = str(flag)
        proc = chaos.start()
    code = chaos.finish(proc, timeout=300)
    if code is None:
        kill_all(session_pids(proc.pid))
    chaos.report.disk_exit = code
    log(f"disk full ({disk}): `ablagen run` exited {code}")
    (study.parent / "fill.bin").unlink(missing_ok=True)
    flag.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--groups", type=int, default=246, help="neuron groups (+5 scripts)"
    )
    parser.add_argument("--kills", type=int, default=20, help="driver SIGKILLs")
    parser.add_argument("--worker-kills", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="of the fault schedule")
    parser.add_argument(
        "--disk", choices=("auto", "tmpfs", "hook", "none"), default="auto"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ablagen-chaos-"))
    try:
        report = soak(
            work, args.groups, args.kills, args.worker_kills, args.jobs, args.seed,
            args.disk, log=lambda line: print(line, file=sys.stderr, flush=True),
        )  # fmt: skip
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(dict(asdict(report), clean=report.clean), indent=2))
    else:
        print(
            f"runs {report.runs}, driver kills {report.driver_kills}, worker kills"
            f" {report.worker_kills}, disk full {report.disk_full}, sessions"
            f" {report.sessions} (the full disk's exited {report.disk_exit})\nlost {report.lost}, duplicated {report.duplicated},"
            f" differing {report.differing}, orphans {report.orphans} (after each kill:"
            f" {report.orphans_per_kill}), left over {report.leftover}, integrity"
            f" {report.integrity}\nwall time {report.chaos_s:.1f} s under chaos,"
            f" {report.reference_s:.1f} s uninterrupted"
            f" ({report.chaos_s / max(report.reference_s, 1e-9):.2f}x)"
        )
        for line in report.errors:
            print(f"  said: {line}")
        for key in report.duplicates:
            print(f"  completed more than once: {key}")
        for key in report.failed_results:
            print(f"  wrote a result that is not ok (then ran again): {key}")
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
