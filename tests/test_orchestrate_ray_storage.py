"""What a Ray node does without the study, piece by piece (no cluster): the data
bundle and the run folder it is unpacked for, ``--storage`` through fsspec, and a
run's checkpoint kept there while it runs."""

from __future__ import annotations

import io
import json
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
from ablagen.orchestrate.ray_data import data_bundle

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
    bundle = data_bundle(study)
    blob, up = bundle.blob, bundle.up
    assert up == rel.count("..")
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        assert tar.getnames() == [
            rel.removeprefix("../"),
            rel.removeprefix("../") + "/a.txt",
        ]
    again = data_bundle(study).blob
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


#: a model file whose build_data() reads two files next to it: one by the absolute
#: path its author wrote, one relative to the working directory (the study's folder)
OWN_DATA = """
import os
from pathlib import Path

import numpy as np
from torch import nn

INPUT_SHAPE = (8,)
DATA_DIR = Path({folder!r})  # where the inputs are


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def build_data():
    x = np.load(DATA_DIR / "x.npy")
    y = np.loadtxt(os.path.join("..", "y.csv"), dtype=np.int64)  # from the study
    return x[:100], y[:100], x[100:], y[100:]
"""


def own_data_model(folder: Path) -> Path:
    """``folder``/model.py with its x.npy and y.csv beside it."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.save(folder / "x.npy", rng.normal(size=(120, 8)).astype("float32"))
    np.savetxt(folder / "y.csv", rng.integers(0, 3, 120), fmt="%d")
    model = folder / "model.py"
    model.write_text(OWN_DATA.format(folder=str(folder)))
    return model


@pytest.mark.slow
def test_files_build_data_opens_travel_and_appear_where_it_reads_them(
    tmp_path, monkeypatch
):
    """The probe finds both files; on a node where they are gone, the run folder
    has the relative one and a link stands at the absolute path: the script's
    metrics equal those of its run in the study."""
    from scriptutil import generate

    from ablagen.generate.context import TrainConfig
    from ablagen.orchestrate.ray_data import probe_result, start_probe

    proj = tmp_path / "proj"
    model = own_data_model(proj)
    study = generate(
        model, proj / "study", components=("fc1",), train=TrainConfig(epochs=2)
    )
    opened = probe_result(start_probe(study))
    assert opened == ray_warm_opened(proj)
    bundle = data_bundle(study, opened)
    assert bundle.up == 1 and bundle.absolute == (str(proj / "x.npy"),)

    here = subprocess.run(
        [sys.executable, "baseline.py", "--out", str(tmp_path / "here.json")],
        cwd=study,
        capture_output=True,
        text=True,
    )
    assert here.returncode == 0, here.stderr
    moved = tmp_path / "moved"  # the node: the project is not there
    proj.rename(moved)
    node = tmp_path / "node"
    with tarfile.open(fileobj=io.BytesIO(bundle.blob)) as tar:
        tar.extractall(node, filter="data")
    monkeypatch.setattr(ray_warm, "node_data", lambda data: str(node))
    run = tmp_path / "run"
    script = (moved / "study" / "baseline.py").read_bytes()
    data = {"sha": "x", "up": bundle.up, "absolute": list(bundle.absolute)}
    cwd, path = ray_warm.prepare(str(run), "baseline.py", script, str(study), data)
    assert Path(cwd) == run / "up" and (proj / "x.npy").is_symlink()
    there = subprocess.run(
        [sys.executable, path, "--out", str(tmp_path / "there.json")],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    assert there.returncode == 0, there.stderr
    final = [
        json.loads((tmp_path / f).read_text())["final"]
        for f in ("here.json", "there.json")
    ]
    assert final[0] == final[1]


def ray_warm_opened(proj: Path):
    from ablagen.orchestrate.ray_data import Opened

    return Opened(relative=("../y.csv",), absolute=(str(proj / "x.npy"),))


def test_a_file_that_cannot_be_put_in_place_fails_the_run_in_one_line(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    node = tmp_path / "node"
    node.mkdir()
    want = str(blocker / "x.npy")  # its folder cannot be made
    with pytest.raises(ray_warm.Unshipped) as caught:
        ray_warm.place_absolute(str(node), [want])
    said = str(caught.value)
    assert (
        said.startswith(f"build_data() reads {want}, which node") and "\n" not in said
    )
    assert said.endswith(
        "put it there on every node, or open it relative to the script's folder"
    )
    reply = ray_warm.unshipped_reply(caught.value)
    assert (reply["exit_code"], reply["log"], reply["result"]) == (2, said + "\n", None)


LAZY_DATA = '''"""Items kept as one .npy file each, read only when the loader asks for them."""

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

INPUT_SHAPE = (8,)
ITEMS = Path(__file__).parent / "items"


class Shards(Dataset):
    def __init__(self, names):
        self.names = names

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        x = torch.from_numpy(np.load(ITEMS / self.names[i]))
        return x, int(self.names[i][0])


def build_datasets():
    names = sorted(p.name for p in ITEMS.glob("*.npy"))
    return Shards(names[:8]), Shards(names[8:])


model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
'''


@pytest.mark.slow
def test_files_a_dataset_reads_item_by_item_are_found(tmp_path):
    """Nothing is opened when build_datasets() runs: each item's file is opened by
    ``__getitem__``. The probe reads every item, so every file travels."""
    import numpy as np
    from scriptutil import generate

    from ablagen.orchestrate.ray_data import Opened, probe_result, start_probe

    proj = tmp_path / "proj"
    (proj / "items").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"{i % 3}_{i:02d}.npy" for i in range(12)]
    for name in names:
        np.save(proj / "items" / name, rng.normal(size=8).astype("float32"))
    (proj / "model.py").write_text(LAZY_DATA)
    study = generate(proj / "model.py", proj / "study", components=("0",))
    opened = probe_result(start_probe(study))
    assert opened == Opened(relative=tuple(f"../items/{n}" for n in sorted(names)))
    bundle = data_bundle(study, opened)
    with tarfile.open(fileobj=io.BytesIO(bundle.blob)) as tar:
        shipped = sorted(tar.getnames())
    assert shipped == sorted(f"items/{n}" for n in names)


def test_the_probe_reads_the_datasets_a_data_function_returns():
    """Loaders stand for their datasets, containers are opened, tensors are not
    datasets; the reading stops once its time is out."""
    import torch
    from torch.utils.data import DataLoader, IterableDataset, TensorDataset

    from ablagen.orchestrate.ray_data import _datasets, _read_every_item

    class Counting(IterableDataset):
        def __init__(self):
            self.read = 0

        def __iter__(self):
            for i in range(5):
                self.read += 1
                yield i

    plain = TensorDataset(torch.zeros(4, 2))
    streamed = Counting()
    made = (DataLoader(plain, batch_size=2), {"val": streamed, "x": torch.zeros(3)})
    assert _datasets(made) == [plain, streamed]
    assert _read_every_item([streamed], 60.0) and streamed.read == 5
    assert not _read_every_item([Counting()], -1.0)  # out of time at the first item
