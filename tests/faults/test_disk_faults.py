"""A full disk (or an unwritable one) at every write site: one line, exit 2, nothing lost.

``OSError(ENOSPC)`` (SQLite's "database or disk is full" for the store) is injected
at each write site in turn; then the same study is run on a real 700 KiB filesystem
where the test may mount one (root), and resumed once the filesystem grows.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest_orchestrate import counter, db_rows, make_study

import ablagen.core.atomic
from ablagen.cli import main
from ablagen.core.atomic import WriteError, atomic_write_text
from ablagen.orchestrate.store import ResultStore

pytestmark = pytest.mark.timeout(180)

VARIANTS = {"baseline": "ok", **{f"v{i}:zero": "ok" for i in range(5)}}
RUN = ["--jobs", "2", "--quiet"]


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def statuses(study: Path) -> dict[str, str]:
    """variant -> cell status, as `ablagen status` reads it."""
    from ablagen.orchestrate import study_status

    return {c.variant_id: c.status for c in study_status(study).cells}


def resume_finishes(study: Path) -> None:
    """The same command, once the fault is gone: every run ok, stored once."""
    assert main(["run", str(study), *RUN]) == 0
    rows = db_rows(study)
    assert sorted((v, s) for v, s, _, _ in rows) == sorted((v, 0) for v in VARIANTS)
    assert all(status == "ok" for _, _, status, _ in rows)


@pytest.fixture(autouse=True)
def light_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake scripts import no torch: the workers need not preload it."""
    monkeypatch.setattr("ablagen.orchestrate.local.BASE_PRELOAD", ())


@pytest.fixture
def study(tmp_path: Path) -> Path:
    return make_study(tmp_path / "study", dict(VARIANTS))


def test_store_full_when_storing_a_result(
    study: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ResultStore.finish
    calls = []

    def finish(self: ResultStore, record):  # the third outcome meets a full disk
        calls.append(record.variant_id)
        if len(calls) == 3:
            with self._transaction(self._conn, self.path):
                raise sqlite3.OperationalError("database or disk is full")
        return real(self, record)

    monkeypatch.setattr(ResultStore, "finish", finish)
    assert main(["run", str(study), *RUN]) == 2
    err = one_line_error(capsys)
    assert f"cannot write the result store {study / 'results.sqlite'}" in err
    assert "database or disk is full" in err and "back to pending" in err
    assert f"free space on the disk holding {study} (`df -h {study}`)" in err
    state = statuses(study)
    assert list(state.values()).count("ok") == 2  # stored before the fault: kept
    assert state[calls[2]] == "pending"  # not left "running"
    assert "running" not in state.values()
    monkeypatch.setattr(ResultStore, "finish", real)
    resume_finishes(study)


def test_store_full_when_claiming_a_run(
    study: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ResultStore.claim
    calls = []

    def claim(self: ResultStore, spec, owner, backend, *args):
        calls.append(spec.variant_id)
        if len(calls) == 4:
            with self._transaction(self._conn, self.path):
                raise sqlite3.OperationalError("database or disk is full")
        return real(self, spec, owner, backend, *args)

    monkeypatch.setattr(ResultStore, "claim", claim)
    assert main(["run", str(study), *RUN]) == 2
    assert "database or disk is full" in one_line_error(capsys)
    assert "running" not in statuses(study).values()
    monkeypatch.setattr(ResultStore, "claim", real)
    resume_finishes(study)


def test_run_log_cannot_be_created(
    study: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Path.open

    def open_(self: Path, mode: str = "r", *args, **kwargs):
        if self.parent.name == "logs" and "v2__zero" in self.name:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_)
    assert main(["run", str(study), *RUN]) == 2
    err = one_line_error(capsys)
    assert "cannot write the run log" in err and "v2__zero__seed0" in err
    assert "No space left on device" in err and "df -h" in err
    assert statuses(study)["v2:zero"] == "pending"
    assert "running" not in statuses(study).values()
    monkeypatch.setattr(Path, "open", real)
    resume_finishes(study)


def test_log_folder_not_writable(
    study: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Path.mkdir

    def mkdir(self: Path, *args, **kwargs):
        if self.name == "logs":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert main(["run", str(study), *RUN]) == 2
    err = one_line_error(capsys)
    assert f"cannot write the log folder {study / 'logs'} (Permission denied)" in err
    assert f"make {study} writable" in err
    monkeypatch.setattr(Path, "mkdir", real)
    resume_finishes(study)


def test_a_run_that_dies_of_a_full_disk_goes_back_to_pending(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = make_study(
        tmp_path / "study", {"baseline": "ok", "a:zero": "ok", "b:zero": "raise"}
    )
    script = study / "b__zero.py"  # raises ENOSPC as a checkpoint write would
    text = script.read_text().replace(
        'raise RuntimeError(f"boom in {VARIANT}")',
        "raise OSError(28, 'No space left on device', '/scratch/ckpt.pt')",
    )
    script.write_text(text)
    from conftest_orchestrate import write_manifest

    write_manifest(study, ["baseline", "a:zero", "b:zero"])
    assert main(["run", str(study), "--jobs", "1", "--quiet"]) == 2
    err = one_line_error(capsys)
    assert (
        "b:zero seed=0 stopped on a full disk ([Errno 28] No space left on device"
        in err
    )
    assert "free space on the disk holding /scratch (`df -h /scratch`)" in err
    assert statuses(study)["b:zero"] == "pending"


def test_a_run_whose_log_cannot_say_it_hit_a_full_disk_goes_back_to_pending(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its log is on the full disk too: a failed run on a disk with no room left is
    put back (the next run stores its result, if it wrote one), not stored failed."""
    study = make_study(tmp_path / "study", {"baseline": "raise"})
    monkeypatch.setattr("ablagen.orchestrate.runner.free_bytes", lambda path: 0)
    assert main(["run", str(study), "--quiet"]) == 2
    err = one_line_error(capsys)
    assert "baseline seed=0 stopped on a full disk (No space left on device)" in err
    assert statuses(study)["baseline"] == "pending"


@pytest.mark.parametrize(
    "target",
    [
        "importance.json",
        "importance.csv",
        "noise_scales.json",
        "importance.png",
        "curves.png",
        "report.md",
    ],
)
def test_report_writes_on_a_full_disk(
    target: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ablagen.rank.ranking
    from test_report import _manifest_json, _records

    study = tmp_path / "study"
    study.mkdir()
    manifest = _manifest_json()
    (study / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    for v in manifest["variants"]:
        (study / v["script"]).write_text("# script\n", encoding="utf-8")
    monkeypatch.setattr(ablagen.rank.ranking, "load_records", lambda study_dir: _records())
    assert main(["rank", str(study)]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in study.iterdir()}
    real = ablagen.core.atomic.tempfile.mkstemp

    def mkstemp(*args, prefix: str = "", **kwargs):
        if prefix == f".{target}.":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(ablagen.core.atomic.tempfile, "mkstemp", mkstemp)
    assert main(["rank", str(study)]) == 2
    err = one_line_error(capsys)
    assert f"cannot write {study / target} (No space left on device)" in err
    assert f"free space on the disk holding {study}" in err
    after = {p.name: p.read_bytes() for p in study.iterdir()}
    assert after == before  # every file whole: the old one, or the same new one


def test_atomic_write_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "x.json"
    path.write_text("old")

    def fsync(fd: int) -> None:
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(ablagen.core.atomic.os, "fsync", fsync)
    with pytest.raises(WriteError) as info:
        atomic_write_text(path, "new", "the ranking")
    assert str(info.value) == (
        f"cannot write the ranking {path} (Disk quota exceeded); free space on the disk"
        f" holding {tmp_path} (`df -h {tmp_path}`), then run the same command again:"
        " what was stored is kept"
    )
    assert info.value.no_space and path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temp file left


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 700 KiB tmpfs (root only; skipped elsewhere); grown by calling it."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small filesystem needs root")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")

    def grow(size: str = "8m") -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)

    try:
        yield mnt, grow
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow
def test_a_real_full_disk(small_fs) -> None:
    mnt, grow = small_fs
    variants = {"baseline": "ok", **{f"v{i}:zero": "ok" for i in range(23)}}
    study = make_study(mnt / "study", variants)
    run = [sys.executable, "-m", "ablagen", "run", str(study), "--jobs", "2"]
    run += ["--quiet", "--max-memory", "0"]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr
    assert "disk is full" in proc.stderr and f"df -h {study}" in proc.stderr
    # status reads a full disk, and finds no run left "running"
    fill = mnt / "fill"
    with pytest.raises(OSError), open(fill, "wb") as fh:
        while True:
            fh.write(b"\0" * 65536)
    status = [sys.executable, "-m", "ablagen", "status", str(study), "--json"]
    state = subprocess.run(status, capture_output=True, text=True, timeout=60)
    assert state.returncode == 0, state.stderr
    counts = json.loads(state.stdout)["counts"]
    assert counts["running"] == 0 and counts["pending"] > 0 and counts["ok"] > 0
    stored = {(v, s) for v, s, status_, _ in db_rows(study) if status_ == "ok"}
    fill.unlink()
    grow()
    proc = subprocess.run(run, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = db_rows(study)
    assert len(rows) == 24 and all(r[2] == "ok" for r in rows)
    finished = counter(study)
    for variant, seed in stored:  # stored before the disk filled: never run again
        assert finished[f"{variant} {seed}"] == 1
