"""``--dataset synthetic`` fits the task and the model: token ids within the embedding
that reads them, next-token targets for lm, one label per position for tokens, 0/1
vectors for multilabel; tiny Hugging Face GPT-2 and BERT studies on it train and
ablate end to end (retrain, knockout), a plain-torch GPT screens."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from ablagen.generate.context import TrainConfig
from ablagen.data.synthetic import token_range
from conftest import EXAMPLES, MODELS, run_cli
from scriptutil import generate, load_script

TINY_GPT = EXAMPLES / "tiny_gpt.py"

HF_MODELS = """
import torch
from transformers import (
    BertConfig, BertForSequenceClassification, BertForTokenClassification,
    GPT2Config, GPT2LMHeadModel,
)

GPT2 = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=12,
                  bos_token_id=0, eos_token_id=0)
BERT = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=10, num_labels=3, pad_token_id=0)


def gpt2_lm():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2)


def bert_classifier():
    torch.manual_seed(0)
    return BertForSequenceClassification(BERT)


def bert_tagger():
    torch.manual_seed(0)
    return BertForTokenClassification(BERT)


def example_input():
    return torch.randint(0, 30, (2, 10), generator=torch.Generator().manual_seed(0))
"""


def _hf_file(tmp_path: Path) -> Path:
    pytest.importorskip("transformers")
    path = tmp_path / "hf_tiny.py"
    path.write_text(HF_MODELS)
    return path


def _data(study: Path, script: str = "baseline.py"):
    module = load_script(study / script)
    return module, module.load_data()


def test_token_range_is_the_embedding_that_reads_the_input(tmp_path):
    """Not the smallest table: GPT-2's positions (12) and BERT's token types (2) read
    other ids; the old rule drew GPT-2's tokens from [0, 12) and BERT's from [0, 2)."""
    transformers = pytest.importorskip("transformers")
    module = load_script(_hf_file(tmp_path))
    tokens = module.example_input()
    assert token_range(module.gpt2_lm(), tokens) == 40
    assert token_range(module.bert_classifier(), tokens) == 30
    assert isinstance(module.bert_classifier(), transformers.PreTrainedModel)

    class OffsetIds(nn.Module):  # reads ids + 1: no table reads the input itself
        def __init__(self):
            super().__init__()
            self.small, self.large = nn.Embedding(7, 4), nn.Embedding(50, 4)

        def forward(self, ids):
            return self.small(ids % 7) + self.large(ids + 1)

    assert token_range(OffsetIds(), tokens) == 7  # the smallest table: safe


def test_lm_targets_are_the_next_tokens(tmp_path):
    study = generate(
        f"{TINY_GPT}:build_lm",
        tmp_path / "lm",
        dataset="synthetic",
        train=TrainConfig(epochs=1, task="lm"),
    )
    module, (x_train, y_train, x_val, y_val) = _data(study)
    assert module.TOKEN_RANGE == 96 and module.NUM_OUTPUTS == 96
    for x, y in ((x_train, y_train), (x_val, y_val)):
        assert x.shape == y.shape == (len(x), 12) and x.dtype == y.dtype == torch.long
        assert torch.equal(y[:, :-1], x[:, 1:])  # the inputs shifted by one
        assert 0 <= int(x.min()) and int(torch.cat([x, y]).max()) < 96
    assert len(x_train) + len(x_val) == module.SYNTHETIC_SAMPLES
    # something to learn: a token's most common successor follows it ~FOLLOW of the time
    pairs = Counter(zip(x_train.flatten().tolist(), y_train.flatten().tolist()))
    best: dict[int, int] = {}
    for (a, _), count in pairs.items():
        best[a] = max(best.get(a, 0), count)
    assert sum(best.values()) / y_train.numel() > 0.7


def test_token_labels_are_one_per_position_and_follow_the_token(tmp_path):
    study = generate(
        f"{TINY_GPT}:build_lm",
        tmp_path / "tags",
        dataset="synthetic",
        train=TrainConfig(epochs=1, task="tokens"),
    )
    _, (x, y, _, _) = _data(study)
    assert y.shape == x.shape and y.dtype == torch.long
    assert 0 <= int(y.min()) and int(y.max()) < 96
    for token in x.unique().tolist():  # the label is a function of the token
        assert len(y[x == token].unique()) == 1


def test_multilabel_targets_are_zero_one_vectors(tmp_path):
    study = generate(
        MODELS / "mlp.py",
        tmp_path / "ml",
        dataset="synthetic",
        train=TrainConfig(epochs=1, task="multilabel"),
    )
    module, (x, y, _, _) = _data(study)
    assert y.shape == (len(x), module.NUM_OUTPUTS) and y.dtype == torch.float32
    assert set(y.unique().tolist()) == {0.0, 1.0}
    share = y.mean(dim=0)  # each label is on for some samples, off for others
    assert bool(((share > 0.05) & (share < 0.95)).all())


def test_lm_on_a_model_without_token_inputs_is_one_line(tmp_path, capsys):
    model = tmp_path / "floats.py"
    model.write_text(textwrap.dedent("""
            import torch
            from torch import nn

            INPUT_SHAPE = (6, 4)


            def build_model():
                return nn.Linear(4, 9)  # (batch, 6, 9): shaped like an lm, fed floats
            """))
    code, _, err = run_cli(
        ["generate", model, "--out", tmp_path / "s", "--dataset", "synthetic",
         "--task", "lm"],
        capsys,
    )  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "--task lm on synthetic data needs token ids" in err
    assert not (tmp_path / "s").exists()


def _run(study: Path, script: str, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, script, "--epochs", "1", "--out", "r.json", *args],
        cwd=study, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((study / "r.json").read_text())
    assert result["status"] == "ok", result["error"]
    return result


def _cli_generate(capsys, model: str, out: Path, task: str, *flags: str) -> Path:
    code, _, err = run_cli(
        ["generate", model, "--out", out, "--dataset", "synthetic", "--task", task,
         "--epochs", "1", "--batch-size", "32", *flags],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    return out


@pytest.mark.slow
def test_hf_gpt2_lm_retrains_and_knocks_out_on_synthetic_data(tmp_path, capsys):
    """The issue's case: it failed every run with "Expected input batch_size (1024)
    to match target batch_size (4096)"."""
    model = f"{_hf_file(tmp_path)}:gpt2_lm"
    retrain = _cli_generate(
        capsys, model, tmp_path / "r", "lm", "--components", "lm_head:zero"
    )
    base = _run(retrain, "baseline.py")
    ablated = _run(retrain, "lm_head__zero.py")
    assert base["final"]["val_ppl"] < 40  # learnt something of the successor table
    assert ablated["final"]["val_ppl"] == pytest.approx(40)  # zero logits: uniform
    knockout = _cli_generate(
        capsys, model, tmp_path / "k", "lm", "--mode", "knockout", "--kinds", "heads"
    )
    result = _run(knockout, "knockout.py")
    assert result["final"]["val_ppl"] == pytest.approx(base["final"]["val_ppl"])
    heads = {k: v for k, v in result["variants"].items() if "heads[" in k}
    assert len(heads) == 2 and all(v["status"] == "ok" for v in heads.values())


@pytest.mark.slow
@pytest.mark.parametrize(
    "model, task",
    [
        ("bert_classifier", "classification"),
        ("bert_classifier", "multilabel"),
        ("bert_classifier", "regression"),
        ("bert_tagger", "tokens"),
        ("gpt2_lm", "tokens"),
    ],
)
def test_hf_models_knock_out_every_task_that_fits(tmp_path, capsys, model, task):
    study = _cli_generate(
        capsys, f"{_hf_file(tmp_path)}:{model}", tmp_path / "k", task,
        "--mode", "knockout", "--kinds", "layers",
    )  # fmt: skip
    result = _run(study, "knockout.py")
    assert result["variants"] and all(
        v["status"] == "ok" for v in result["variants"].values()
    )
    loss = result["final"]["val_loss"]
    assert loss == pytest.approx(result["variants"]["baseline"]["final"]["val_loss"])
    if task != "regression":
        assert 0 <= result["final"]["val_acc"] <= 1


@pytest.mark.slow
def test_a_plain_torch_gpt_screens_lm_on_synthetic_data(tmp_path, capsys):
    study = _cli_generate(
        capsys, f"{TINY_GPT}:build_lm", tmp_path / "s", "lm",
        "--mode", "screen", "--kinds", "heads",
    )  # fmt: skip
    result = _run(study, "screen.py")
    heads = {k: v for k, v in result["variants"].items() if "heads[" in k}
    assert len(heads) == 8 and all(v["status"] == "ok" for v in heads.values())
    assert result["screen"]["curvature"] == "none"  # first order: no class logits


@pytest.mark.slow
@pytest.mark.parametrize(
    "model, task", [("gpt2_lm", "lm"), ("bert_classifier", "classification")]
)
def test_hf_models_screen_on_synthetic_data(tmp_path, capsys, model, task):
    """No torch.fx graph: screen.py probes on hooks. Every component but the position
    table (one value for all samples) is estimated; zeroing GPT-2's lm_head gives
    uniform scores, loss ln 40, which the first-order estimate comes close to."""
    study = _cli_generate(
        capsys,
        f"{_hf_file(tmp_path)}:{model}",
        tmp_path / "s",
        task,
        "--mode",
        "screen",
    )
    assert "traced=False" in (study / "screen.py").read_text()
    result = _run(study, "screen.py")
    assert result["screen"]["path"] == "hooks"
    variants = result["variants"]
    skipped = {k for k, v in variants.items() if v["status"] != "ok"}
    positions = {
        "gpt2_lm": "transformer.wpe:zero",
        "bert_classifier": "bert.embeddings.position_embeddings:zero",
    }
    assert skipped == {positions[model]}
    assert len(variants) > 12
    if task == "lm":
        estimate = variants["lm_head:zero"]["final"]["val_loss"]
        assert estimate == pytest.approx(math.log(40), rel=0.05)
