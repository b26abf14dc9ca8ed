"""Each data form and each task: generate, run 1 epoch, check the result JSON against a
reference (hand-computed data, torch's own losses, a second run, a tensor-returning twin).

The data is made here: PNG files from scikit-learn's digits, a CSV, a text file.
"""

from __future__ import annotations

import csv
import json
import math
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ablagen.generate.context import DataSpec, TrainConfig
from ablagen.core.errors import AblagenError
from ablagen.rank.ranking import higher_is_better
from scriptutil import generate, load_script, load_tensors, seed_as_main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run(script: Path, *args: str) -> dict:
    out = script.parent / f"result{len(list(script.parent.glob('result*.json')))}.json"
    proc = subprocess.run(
        [sys.executable, script.name, "--out", out.name, *args],
        cwd=script.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    result = json.loads(out.read_text())
    assert result["status"] == "ok" or proc.returncode != 0, proc.stderr
    return result


def write_digits(root: Path, count: int = 120) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(
        zip(digits.images[:count], digits.target[:count])
    ):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")
    return root


def write_csv(path: Path, rows: int = 120) -> Path:
    rng = random.Random(0)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["a", "b", "c", "d", "e", "f", "label"])
        for _ in range(rows):
            x = [rng.gauss(0, 1) for _ in range(6)]
            label = ["low", "mid", "high"][int(x[0] + x[1] > 0.5) + int(x[2] > 1)]
            writer.writerow([f"{v:.4f}" for v in x] + [label])
    return path


def write_text(path: Path) -> Path:
    rng = random.Random(0)
    words = "the cat sat on a mat and a dog ran to the red hat".split()
    lines = (" ".join(rng.choice(words) for _ in range(10)) + "." for _ in range(120))
    path.write_text("\n".join(lines))
    return path


# ----------------------------------------------------------------------------- sources
def test_folder_streamed_and_deterministic_with_two_workers(tmp_path):
    """folder:DIR streams through DataLoaders; two runs with --num-workers 2 agree, and
    the data section names the path it takes."""
    write_digits(tmp_path / "digits")
    study = generate(
        EXAMPLES / "folder_cnn.py",
        tmp_path / "s",
        dataset=f"folder:{tmp_path / 'digits'}",
    )
    text = (study / "baseline.py").read_text()
    assert "streamed through DataLoaders" in text and "DataLoader(" in text
    first = run(study / "baseline.py", "--num-workers", "2")
    second = run(study / "baseline.py", "--num-workers", "2")
    assert first["status"] == "ok" and first["final"] == second["final"]
    assert 0 <= first["final"]["val_acc"] <= 1
    # the script's images are the generator's reference reading of the same files
    module = load_script(study / "baseline.py")
    train_set, val_set = module.build_datasets()
    assert len(train_set) + len(val_set) == 120 and len(val_set) == 24
    from ablagen.data.files import load_image

    path, label = train_set.dataset.samples[0]
    assert torch.equal(train_set.dataset[0][0], load_image(path, 1, (16, 16)))


def test_build_datasets_with_augmentation_is_repeatable(tmp_path, monkeypatch):
    """examples/folder_cnn.py: augmentation in build_datasets(), seeded workers."""
    digits = write_digits(tmp_path / "digits")
    monkeypatch.setenv("DIGITS_DIR", str(digits))
    study = generate(EXAMPLES / "folder_cnn.py", tmp_path / "s")
    assert "build_datasets(), streamed" in (study / "baseline.py").read_text()
    runs = [run(study / "baseline.py", "--num-workers", "2") for _ in range(2)]
    assert runs[0]["status"] == "ok" and runs[0]["final"] == runs[1]["final"]
    assert runs[0]["history"][0]["train_loss"] > 0


LOADERS_MODEL = """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

INPUT_SHAPE = (4,)


def build_model():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def build_loaders(batch_size, seed):
    train = DataLoader(data(), batch_size=batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(seed))
    return train, DataLoader(data(), batch_size=batch_size)
"""


def test_build_loaders_and_output_adapters(tmp_path):
    """build_loaders() is used as given; a model returning a tuple, a dict or a
    ModelOutput-like object trains exactly like its tensor-returning twin."""
    base = tmp_path / "loaders.py"
    base.write_text(textwrap.dedent(LOADERS_MODEL))
    study = generate(base, tmp_path / "tensor")
    reference = run(study / "baseline.py")
    assert reference["status"] == "ok"
    wrappers = {
        "tuple": "return (self.net(x), x)",
        "dict": 'return {"hidden": x, "logits": self.net(x)}',
        "object": "return Out(self.net(x))",
    }
    for kind, body in wrappers.items():
        src = textwrap.dedent(LOADERS_MODEL).replace(
            "def build_model():\n    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))",
            textwrap.dedent(f"""
                class Out:
                    def __init__(self, logits):
                        self.logits = logits


                class Wrapped(nn.Module):
                    def __init__(self):
                        super().__init__()
                        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

                    def forward(self, x):
                        {body}


                def build_model():
                    return Wrapped()
                """),
        )
        path = tmp_path / f"{kind}.py"
        path.write_text(src)
        study = generate(path, tmp_path / kind)
        text = (study / "baseline.py").read_text()
        assert "def prediction(output):" in text
        result = run(study / "baseline.py")
        assert result["final"] == reference["final"], kind


def test_csv_standardized_with_training_statistics(tmp_path):
    data = write_csv(tmp_path / "m.csv")
    study = generate(
        EXAMPLES / "csv_mlp.py", tmp_path / "s", dataset=f"csv:{data}", target="label"
    )
    module = load_script(study / "baseline.py")
    x_train, y_train, x_val, y_val = module.load_data()
    rows = list(csv.DictReader(data.open()))
    x = torch.tensor([[float(r[c]) for c in "abcdef"] for r in rows])
    classes = sorted({r["label"] for r in rows})
    y = torch.tensor([classes.index(r["label"]) for r in rows])
    order = torch.randperm(120, generator=torch.Generator().manual_seed(0))
    val, train = order[:24], order[24:]
    mean, std = x[train].mean(0), x[train].std(0)
    torch.testing.assert_close(x_train, (x[train] - mean) / std)
    torch.testing.assert_close(x_val, (x[val] - mean) / std)
    assert torch.equal(y_train, y[train]) and torch.equal(y_val, y[val])
    result = run(study / "baseline.py")
    assert result["status"] == "ok" and 0 <= result["final"]["val_acc"] <= 1


def test_text_lm_tokens_and_perplexity(tmp_path):
    corpus = write_text(tmp_path / "corpus.txt")
    study = generate(
        EXAMPLES / "char_lm.py",
        tmp_path / "s",
        dataset=f"text:{corpus}",
        train=TrainConfig(epochs=1, task="lm", target_ppl=1000.0),
    )
    module = load_script(study / "baseline.py")
    x_train, y_train, x_val, y_val = module.load_data()
    raw = corpus.read_bytes()
    vocab = sorted(set(raw))
    ids = torch.tensor([vocab.index(b) for b in raw])
    n_val = round(0.2 * len(ids))
    assert torch.equal(x_train[0], ids[:32]) and torch.equal(y_train[0], ids[1:33])
    assert torch.equal(x_val[0], ids[-n_val:][:32])
    result = run(study / "baseline.py")
    final = result["final"]
    assert final["val_ppl"] == pytest.approx(math.exp(final["val_loss"]))
    assert final["val_acc"] is None and result["epochs_to_target"] == 1
    assert not higher_is_better("val_ppl")


def test_text_word_tokenizer_vocabulary_is_recorded(tmp_path):
    corpus = write_text(tmp_path / "corpus.txt")
    study = generate(
        EXAMPLES / "char_lm.py",
        tmp_path / "s",
        dataset=f"text:{corpus}",
        tokenizer="word",
        train=TrainConfig(epochs=1, task="lm"),
    )
    module = load_script(study / "baseline.py")
    words = corpus.read_text().split()
    assert module.TEXT_VOCAB == ["<unk>", *sorted(set(words))]
    x_train = module.load_data()[0]
    assert x_train[0].tolist() == [module.TEXT_VOCAB.index(w) for w in words[:32]]


POSITIONS_LM = """
import torch
from torch import nn

INPUT_SHAPE = None


class PositionsLM(nn.Module):
    \"\"\"Token and learned position embeddings, as GPT-2-style models have; the
    positions (16) are fewer than the vocabulary (VOCAB).\"\"\"

    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, 8)
        self.wpe = nn.Embedding(16, 8)
        self.head = nn.Linear(8, VOCAB)

    def forward(self, idx):
        pos = torch.arange(idx.shape[1], device=idx.device)
        return self.head(self.wte(idx) + self.wpe(pos))


def example_input():
    return torch.zeros(2, 16, dtype=torch.long)
"""


@pytest.mark.parametrize("vocab", [8, 64])
def test_text_vocabulary_is_checked_against_the_token_embedding(tmp_path, vocab):
    """The token embedding (the one fed the ids) bounds the vocabulary, not the
    smaller position embedding: 64 ids fit a text of 30-odd bytes, 8 do not."""
    corpus = write_text(tmp_path / "corpus.txt")
    distinct = len(set(corpus.read_bytes()))
    assert 8 < distinct <= 64
    model = tmp_path / "positions_lm.py"
    model.write_text(
        POSITIONS_LM.replace("INPUT_SHAPE = None\n", "").replace("VOCAB", str(vocab))
    )
    make = lambda: generate(  # noqa: E731
        model,
        tmp_path / "s",
        dataset=f"text:{corpus}",
        train=TrainConfig(epochs=1, task="lm"),
    )
    if vocab < distinct:
        with pytest.raises(
            AblagenError, match=f"distinct byte tokens but the model embeds {vocab}"
        ):
            make()
    else:
        study = make()
        assert run(study / "baseline.py")["status"] == "ok"


# ----------------------------------------------------------------------------- tasks
TASK_MODEL = """
import torch
from torch import nn

{extra}


def build_data():
    g = torch.Generator().manual_seed(0)
    x = {inputs}
    y = {targets}
    return x[:96], y[:96], x[96:], y[96:]
"""


def _task_study(tmp_path, task, extra, inputs, targets):
    path = tmp_path / f"{task}.py"
    path.write_text(TASK_MODEL.format(extra=extra, inputs=inputs, targets=targets))
    return generate(path, tmp_path / task, train=TrainConfig(epochs=1, task=task))


def test_multilabel_bce_and_accuracy_at_half(tmp_path):
    study = _task_study(
        tmp_path,
        "multilabel",
        "INPUT_SHAPE = (6,)\nmodel = nn.Linear(6, 3)",
        "torch.randn(128, 6, generator=g)",
        "(x[:, :3] > 0).float()",
    )
    module = load_script(study / "baseline.py")
    out, target = torch.randn(5, 3), (torch.rand(5, 3) > 0.5).float()
    torch.testing.assert_close(
        module.loss_fn(out, target), torch.nn.BCEWithLogitsLoss()(out, target)
    )
    assert int(module.count_correct(out, target)) == int(
        ((out > 0).float() == target).sum()
    )
    result = run(study / "baseline.py")
    assert result["status"] == "ok" and 0 <= result["final"]["val_acc"] <= 1


def test_tokens_ignore_index_replaces_the_custom_loss(tmp_path):
    extra = textwrap.dedent("""
        class Tagger(nn.Module):
            def __init__(self):
                super().__init__()
                self.embed = nn.Embedding(10, 8)
                self.head = nn.Linear(8, 2)

            def forward(self, tokens):
                return self.head(self.embed(tokens))


        def example_input():
            return torch.zeros(2, 12, dtype=torch.long)
        """)
    study = _task_study(
        tmp_path,
        "tokens",
        extra,
        "torch.randint(0, 10, (128, 12), generator=g)",
        "torch.where(x > 7, -100, (x % 2))",
    )
    module = load_script(study / "baseline.py")
    out = torch.randn(3, 12, 2)
    target = torch.randint(0, 2, (3, 12))
    target[:, :4] = -100
    torch.testing.assert_close(
        module.loss_fn(out, target),
        torch.nn.functional.cross_entropy(out.reshape(-1, 2), target.reshape(-1)),
    )
    scored = target != -100
    assert int(module.count_labels(target)) == int(scored.sum())
    assert int(module.count_correct(out, target)) == int(
        ((out.argmax(-1) == target) & scored).sum()
    )
    result = run(study / "baseline.py")
    assert result["status"] == "ok" and 0 <= result["final"]["val_acc"] <= 1


def _trained(study: Path) -> tuple[dict, torch.nn.Module, tuple]:
    """baseline.py's train() in-process, seeded as main() does: its result, the model
    it trained (what ablate() returned) and its data."""
    module = load_script(study / "baseline.py")
    models = []
    build = module.ablate
    module.ablate = lambda model: models.append(build(model)) or models[-1]
    args = module.parse_args(["--device", "cpu"])
    seed_as_main(module, args.seed)
    result = module.train(args)
    (model,) = models
    return result, model.eval(), load_tensors(module)


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_regression_and_classification_still_train(tmp_path, task):
    """The final metrics are the trained model's on the held-out samples: MSE for a
    regression (no accuracy), cross-entropy and accuracy for a classification."""
    targets = "x.sum(dim=1)" if task == "regression" else "(x.sum(dim=1) > 0).long()"
    outputs = 1 if task == "regression" else 2
    study = _task_study(
        tmp_path,
        task,
        f"INPUT_SHAPE = (4,)\nmodel = nn.Linear(4, {outputs})",
        "torch.randn(128, 4, generator=g)",
        targets,
    )
    result, model, (_, _, x_val, y_val) = _trained(study)
    assert result["status"] == "ok"
    with torch.no_grad():
        out = model(x_val)
    final = result["final"]
    if task == "regression":
        expected = torch.nn.functional.mse_loss(out.squeeze(-1), y_val)
        assert final["val_acc"] is None
    else:
        expected = torch.nn.functional.cross_entropy(out, y_val)
        accuracy = (out.argmax(-1) == y_val).float().mean().item()
        assert final["val_acc"] == pytest.approx(accuracy)
    assert final["val_loss"] == pytest.approx(expected.item(), rel=1e-5)


# ----------------------------------------------------------------------------- manifest
def test_dataspec_and_trainconfig_round_trip():
    spec = DataSpec(
        "text",
        path="../c.txt",
        tokenizer="word",
        vocab=("<unk>", "a"),
        classes=("x",),
        columns=("a",),
        image_size=(8, 8),
        num_workers=2,
    )
    assert DataSpec.from_manifest(json.loads(json.dumps(spec.to_manifest()))) == spec
    train = TrainConfig(task="lm", target_ppl=3.0, ignore_index=0)
    assert (
        TrainConfig.from_manifest(json.loads(json.dumps(train.to_manifest()))) == train
    )


# ----------------------------------------------------------------------------- bad input
def _error(tmp_path, model, **kwargs) -> str:
    with pytest.raises(AblagenError) as info:
        generate(model, tmp_path / "bad", **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_data_is_one_line(tmp_path):
    assert "does not exist" in _error(
        tmp_path, EXAMPLES / "folder_cnn.py", dataset=f"folder:{tmp_path / 'nope'}"
    )
    digits = write_digits(tmp_path / "digits", count=30)
    (digits / "empty").mkdir()
    assert "empty has no images" in _error(
        tmp_path, EXAMPLES / "folder_cnn.py", dataset=f"folder:{digits}"
    )
    data = write_csv(tmp_path / "m.csv")
    assert "no column 'y'" in _error(
        tmp_path, EXAMPLES / "csv_mlp.py", dataset=f"csv:{data}", target="y"
    )
    bad = tmp_path / "arity.py"
    bad.write_text(
        "import torch\nINPUT_SHAPE = (4,)\nmodel = torch.nn.Linear(4, 2)\n"
        "def build_datasets():\n    return [1, 2, 3]\n"
    )
    assert "returned 3 values" in _error(tmp_path, bad)
    bad.write_text(
        "import torch\nINPUT_SHAPE = (4,)\nmodel = torch.nn.Linear(4, 2)\n"
        "def build_datasets():\n    return [1, 2]\n"
    )
    assert "not torch Datasets" in _error(tmp_path, bad)
    bad.write_text(
        "import torch\nfrom torch.utils.data import TensorDataset\n"
        "INPUT_SHAPE = (4,)\nmodel = torch.nn.Linear(4, 2)\n"
        "def build_datasets():\n    d = TensorDataset(torch.randn(8, 5), torch.zeros(8).long())\n"
        "    return d, d\n"
    )
    assert "have shape (5,)" in _error(tmp_path, bad)
    assert "--task lm needs a prediction of shape (batch, time, vocab)" in _error(
        tmp_path,
        EXAMPLES / "csv_mlp.py",
        dataset="synthetic",
        train=TrainConfig(task="lm"),
    )


def test_corrupt_image_fails_the_run_naming_the_file(tmp_path):
    digits = write_digits(tmp_path / "digits", count=40)
    study = generate(
        EXAMPLES / "folder_cnn.py", tmp_path / "s", dataset=f"folder:{digits}"
    )
    broken = sorted((digits / "3").glob("*.png"))[-1]
    broken.write_bytes(b"not a png")
    result = run(study / "baseline.py", "--num-workers", "0")
    assert result["status"] == "failed" and broken.name in result["error"]


def test_knockout_mode_streams_and_adapts_outputs(tmp_path):
    """Knockout mode on build_loaders() data with a tuple-returning model: its baseline
    score equals baseline.py's own validation metrics."""
    src = textwrap.dedent(LOADERS_MODEL).replace(
        "    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))",
        "    return Pair()\n\n\nclass Pair(nn.Module):\n    def __init__(self):\n"
        "        super().__init__()\n        self.fc = nn.Linear(4, 2)\n\n"
        "    def forward(self, x):\n        return self.fc(x), x",
    )
    path = tmp_path / "pair.py"
    path.write_text(src)
    study = generate(path, tmp_path / "ko", mode="knockout")
    reference = run(study / "baseline.py")
    result = run(study / "knockout.py")
    assert result["status"] == "ok"
    base = result["variants"]["baseline"]["final"]
    assert base["val_loss"] == pytest.approx(reference["final"]["val_loss"], rel=1e-5)
    assert base["val_acc"] == pytest.approx(reference["final"]["val_acc"])


def test_tokens_task_replaces_the_sequence_taggers_custom_loss(tmp_path):
    """examples/sequence_tagger with --task tokens trains exactly like its custom
    loss.py.j2 (no label is IGNORE_INDEX there, so the two losses agree)."""
    model = EXAMPLES / "sequence_tagger" / "model.py"
    custom = generate(
        model, tmp_path / "custom", templates=EXAMPLES / "sequence_tagger" / "templates"
    )
    builtin = generate(
        model, tmp_path / "tokens", train=TrainConfig(epochs=1, task="tokens")
    )
    assert "ignore_index=IGNORE_INDEX" in (builtin / "baseline.py").read_text()
    reference = run(custom / "baseline.py")
    result = run(builtin / "baseline.py")
    for key, value in reference["final"].items():
        assert result["final"][key] == pytest.approx(value, rel=1e-6), key


READS_FROM_CWD = """import numpy as np
from torch import nn

INPUT_SHAPE = (4,)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def build_data():
    x, y = np.load("{data}/x.npy"), np.load("{data}/y.npy")
    return x[:40], y[:40], x[40:], y[40:]
"""


def test_a_file_read_relative_to_the_working_directory_is_refused(
    tmp_path, monkeypatch
):
    """generate runs build_data() where the user is; the scripts run from the study,
    where data/x.npy is not: one line naming the file and the fix, nothing written.
    From the study itself (the regenerate command's place) the same read is fine,
    and so is ablagen's own read of a relative --dataset file."""
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.save(project / "data" / "x.npy", rng.normal(size=(60, 4)).astype("float32"))
    np.save(project / "data" / "y.npy", rng.integers(0, 3, 60))
    (project / "model.py").write_text(READS_FROM_CWD.format(data="data"))
    monkeypatch.chdir(project)
    with pytest.raises(AblagenError) as info:
        generate(project / "model.py", tmp_path / "study")
    assert str(info.value) == (
        f"model.py reads data/x.npy relative to the working directory ({project}), "
        f"but its scripts run from {tmp_path / 'study'}, where there is no data/x.npy; "
        "open it relative to the model file (Path(__file__).parent / 'data/x.npy') "
        "or by an absolute path"
    )
    assert not (tmp_path / "study").exists()
    # run where the scripts run (the regenerate command's place): the same read is fine
    (project / "here.py").write_text(READS_FROM_CWD.format(data="../project/data"))
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    generate(project / "here.py", tmp_path / "here")
    assert run(tmp_path / "here" / "baseline.py", "--epochs", "1")["status"] == "ok"
    monkeypatch.chdir(project)
    (project / "corpus.txt").write_text("a small corpus of text " * 40)
    text = project / "lm.py"
    text.write_text(
        "from torch import nn\n\n\nclass LM(nn.Module):\n    def __init__(self):\n"
        "        super().__init__()\n        self.emb = nn.Embedding(64, 8)\n"
        "        self.out = nn.Linear(8, 64)\n\n    def forward(self, x):\n"
        "        return self.out(self.emb(x))\n"
    )
    generate(text, tmp_path / "lm", dataset="text:corpus.txt", input_shape="8",
             train=TrainConfig(task="lm", epochs=1))  # fmt: skip
