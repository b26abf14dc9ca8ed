"""What a Ray node does without the study, piece by piece (no cluster): the data
bundle and the run folder it is unpacked for, ``--storage`` through fsspec, and a
run's checkpoint kept there while it runs."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from conftest_orchestrate import make_study

from ablagen.core.errors import ConfigError
from ablagen.core.studydir import MANIFEST, load_manifest
from ablagen.orchestrate import RunOptions, ray_warm
from ablagen.orchestrate.ray_backend import data_bundle

pytest.importorskip("fsspec")

READER = """
from pathlib import Path
DATA_PATH = {path!r}
print((Path(__file__).resolve().parent / DATA_PATH / "a.txt").read_text())
"""


def study_with_data(tmp_path: Path, rel: str) -> Path:
    """A study whose manifest says its data is at ``rel`` (relative to the study)."""
    study = make_study(tmp_path / "study", {"baseline": "ok"})
    data = (study / rel).resolve()
    data.mkdir(parents=True)
    (data / "a.txt").write_text("the data")
    manifest = load_manifest(study)
    config = {**manifest.config, "data": {"dataset": "folder", "path": rel}}
    text = manifest.dumps().replace(
        '"config": {}', f'"config": {config!r}'.replace("'", '"')
    )
    (study / MANIFEST).write_text(text)
    assert load_manifest(study).config["data"]["path"] == rel
    return study


@pytest.mark.parametrize("rel", ["../data/digits", "digits"])
def test_a_node_without_the_study_runs_the_script_beside_its_data(
    tmp_path, monkeypatch, rel
):
    study = study_with_data(tmp_path, rel)
    blob, up = data_bundle(study)
    assert up == rel.count("..")
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        assert tar.getnames() == [
            rel.removeprefix("../"),
            rel.removeprefix("../") + "/a.txt",
        ]
    again, _ = data_bundle(study)
    assert again == blob  # the same files: the same bundle (and hash)

    node = tmp_path / "node"  # what node_data would unpack on a node
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(node, filter="data")
    monkeypatch.setattr(ray_warm, "node_data", lambda data: str(node))
    run = tmp_path / "run"
    run.mkdir()
    script = READER.format(path=rel).encode()
    data = {"sha": "x", "up": up, "ref": [None]}
    cwd, path = ray_warm.prepare(str(run), "baseline.py", script, "/nonexistent", data)
    assert Path(path).parent == Path(cwd) and not Path(cwd).is_relative_to(study)
    out = subprocess.run(
        [sys.executable, path], cwd=cwd, capture_output=True, text=True
    )
    assert out.stdout.strip() == "the data", out.stderr


def test_a_node_that_sees_the_study_runs_the_script_in_place(tmp_path):
    study = make_study(tmp_path / "study", {"baseline": "ok"})
    script = (study / "baseline.py").read_bytes()
    cwd, path = ray_warm.prepare(str(tmp_path), "baseline.py", script, str(study), None)
    assert (cwd, path) == (str(study), str(study / "baseline.py"))
    other = ray_warm.prepare(
        str(tmp_path), "baseline.py", b"# changed", str(study), None
    )
    assert other == (str(tmp_path), str(tmp_path / "baseline.py"))  # not that script


def test_checkpoint_is_mirrored_in_storage_while_the_run_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(ray_warm, "SYNC_S", 0.05)
    storage = ray_warm.Storage(str(tmp_path / "storage"))
    rel = "runs/baseline/seed0__aaaaaaaa__bbbbbbbb.pt"
    first = tmp_path / "node1"
    (first / "runs/baseline").mkdir(parents=True)
    ckpt = first / rel
    with ray_warm.CheckpointSync(storage, str(ckpt), rel):
        ckpt.write_bytes(b"epoch 1")
        Path(f"{ckpt}.json").write_text('{"epoch": 1}')
        for _ in range(100):  # the watcher uploads it while the run goes on
            if storage.read_text(rel) == "epoch 1":
                break
            time.sleep(0.05)
        assert storage.read_text(rel) == "epoch 1"
        ckpt.write_bytes(b"epoch 2")
    assert storage.read_text(rel) == "epoch 2"  # the last save, at the end
    assert storage.read_text(rel + ".json") == '{"epoch": 1}'
    assert not list((tmp_path / "storage").rglob("*.part-*"))

    # another node (its node lost) picks it up, the run finishes and removes it
    second = tmp_path / "node2"
    (second / "runs/baseline").mkdir(parents=True)
    with ray_warm.CheckpointSync(storage, str(second / rel), rel):
        assert (second / rel).read_bytes() == b"epoch 2"
        (second / rel).unlink()  # the script's own cleanup of a run that ended ok
    assert not storage.exists(rel) and not storage.exists(rel + ".json")


def test_storage_needs_the_ray_backend():
    with pytest.raises(ConfigError, match="--storage s3://b/p needs the ray backend"):
        RunOptions(storage="s3://b/p")
    assert RunOptions(backend="ray", storage="s3://b/p").storage == "s3://b/p"
