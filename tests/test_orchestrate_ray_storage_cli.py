"""``--storage URI`` on every command that runs Ray (``run``, ``study``, ``sweep``):
the runs keep their results there, the study records the URI, ``ablagen status``
reads a running run's checkpoint note from it, and a bad URI or a local backend is
refused in one line before anything is generated or started."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from conftest_orchestrate import make_study

from ablagen.cli import main
from ablagen.orchestrate import ResultStore
from ablagen.orchestrate.ray_backend import STORAGE_NOTE

pytest.importorskip("fsspec")

MODEL = """
from torch import nn

INPUT_SHAPE = (8,)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))
"""
SMALL = ["--seeds", "0", "--epochs", "1", "--jobs", "1", "--quiet"]
SMALL += ["--dataset", "synthetic"]


def stored_results(storage: Path) -> dict[str, dict]:
    """The results the runs kept in storage, by the result file's study path."""
    return {
        p.relative_to(storage).as_posix(): json.loads(p.read_text())
        for p in storage.rglob("*.result.json")
    }


def assert_runs_kept_in(study: Path, storage: Path) -> None:
    """Every ok run of the study left its result in ``storage``, the same result
    the study's store holds; the study says which storage it used."""
    note = json.loads((study / STORAGE_NOTE).read_text())
    assert note == {"storage": str(storage)}  # absolute: the nodes run elsewhere
    with ResultStore(study, readonly=True) as store:
        finals = {r.variant_id: r.result["final"] for r in store.records()}
    kept = stored_results(storage)
    assert finals and len(kept) == len(finals)
    same = [json.dumps(f, sort_keys=True) for f in finals.values()]
    got = [json.dumps(r["final"], sort_keys=True) for r in kept.values()]
    assert sorted(got) == sorted(same)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_study_and_sweep_runs_keep_their_results_in_storage(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.chdir(tmp_path)  # the URIs are relative: made absolute for the nodes
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    Path("net.py").write_text(textwrap.dedent(MODEL))
    ray = ["--backend", "ray", "--storage"]
    study = ["study", "net.py", "--out", "st", "--components", "fc1", "--no-arms"]
    assert main([*study, *SMALL, *ray, "store"]) == 0
    assert_runs_kept_in(tmp_path / "st", tmp_path / "store")
    sweep = ["sweep", "net.py", "--out", "sw", "--lrs", "0.01", "--arms", "plain"]
    assert main([*sweep, *SMALL, *ray, "store2"]) == 0
    (study_dir,) = {p.parent for p in (tmp_path / "sw").rglob(STORAGE_NOTE)}
    assert_runs_kept_in(study_dir, tmp_path / "store2")


@pytest.mark.parametrize("command", ["run", "study", "sweep"])
@pytest.mark.parametrize(
    "flags, said",
    [
        (["--storage", "st"], "--storage {} needs the ray backend"),
        (
            ["--backend", "ray", "--storage", "nosuch://b/p"],
            "cannot use --storage nosuch://b/p (ValueError: Protocol not known: nosuch)",
        ),
    ],
)
def test_a_bad_storage_is_refused_in_one_line_before_anything_starts(
    tmp_path, monkeypatch, capsys, command, flags, said
):
    monkeypatch.chdir(tmp_path)
    Path("net.py").write_text(textwrap.dedent(MODEL))
    argv = [command, "net.py", "--out", "out", *flags]
    if command == "run":
        argv = [command, str(make_study(tmp_path / "made", {"baseline": "ok"})), *flags]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + said.format("st")), err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_status_shows_the_epoch_of_a_checkpoint_kept_in_storage(
    tmp_path, monkeypatch, capsys
):
    """A run on a node without the study saves its checkpoint in --storage only:
    ``ablagen status`` finds it there, through the URI the run recorded."""
    pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    study = make_study(tmp_path / "study", {"baseline": "ok", "a:zero": "raise"})
    storage = tmp_path / "storage"
    run = ["run", str(study), "--backend", "ray", "--storage", str(storage), "-q"]
    assert main(run) == 1  # a:zero failed
    capsys.readouterr()
    sha8 = json.loads((study / "manifest.json").read_text())["variants"][1]["sha256"]
    rel = f"runs/a__zero/seed0__0123abcd__{sha8[:8]}.pt"  # as its node saved it
    (storage / rel).parent.mkdir(parents=True)
    (storage / rel).write_bytes(b"x" * 100)
    (storage / f"{rel}.json").write_text('{"epoch": 3, "variant": "a:zero", "seed": 0}')
    assert not (study / "runs").exists()

    assert main(["status", str(study), "--json"]) == 0
    state = json.loads(capsys.readouterr().out)
    (variant,) = [v for v in state["variants"] if v["id"] == "a:zero"]
    cell = variant["seeds"]["0"]
    assert (cell["status"], cell["resumable_epoch"], cell["checkpoint"]) == (
        "failed",
        3,
        rel,
    )
    assert state["checkpoints"]["files"] == 1
    assert main(["status", str(study)]) == 0
    assert "resumable at epoch 3" in capsys.readouterr().out

    (study / STORAGE_NOTE).unlink()  # no storage recorded: only the study's own
    assert main(["status", str(study), "--json"]) == 0
    state = json.loads(capsys.readouterr().out)
    (variant,) = [v for v in state["variants"] if v["id"] == "a:zero"]
    assert "resumable_epoch" not in variant["seeds"]["0"]
