"""Attention heads: found in every recognised layout, ablated exactly (against a
hand-written per-head forward and against weight surgery), scored by the knockout
engine (fast path = fresh copies), and their noise scales reach exactly their slices."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ablagen.ablate import HeadMaskAblation, HeadMeanAblation, ablate_head
from ablagen.analyze import build_inventory
from ablagen.generate.knockout_mode import knockouts_for
from ablagen.generate.variants import ablation_spec, parse_kinds, plan_variants
from ablagen.core.errors import ComponentError
from ablagen.knockout_engine import (
    Validation,
    activation_means,
    evaluate_fast,
    evaluate_naive,
    run_knockouts,
)
from ablagen.arms.noise_scales import noise_scales
from ablagen.rank.ranking import ImportanceRow, Ranking
from ablagen.core.studydir import Manifest
from conftest import EXAMPLES

TOL = 1e-5


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_gpt():
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_gpt", EXAMPLES / "tiny_gpt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TimmAttention(nn.Module):
    """timm's layout: one qkv Linear, one proj Linear, ``num_heads``."""

    def __init__(self, dim: int = 16, num_heads: int = 4) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, drop_head: int | None = None) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # (b, heads, n, d)
        if drop_head is not None:  # the hand-written reference: zero one head
            y = y.clone()
            y[:, drop_head] = 0
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class Marked(nn.Module):
    """An attention written its own way, marked with ``ablagen_heads``."""

    ablagen_heads = (2, "mix")

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.mix = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(torch.cat([self.a(x)[..., :4], self.b(x)[..., 4:]], dim=-1))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = TimmAttention()
        self.mha = nn.MultiheadAttention(16, 2, batch_first=True)
        self.marked = Marked(16)
        self.out = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        x = x + self.mha(x, x, x, need_weights=False)[0]
        return self.out(self.marked(x).mean(dim=1))


def _inputs(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 5, 16, generator=torch.Generator().manual_seed(seed))


def _heads(model: nn.Module, x: torch.Tensor):
    inventory = build_inventory(model, (x[:2],), "net", 2)
    return inventory, [c for c in inventory.components if c.kind == "head"]


def test_every_layout_is_found_with_its_slices():
    torch.manual_seed(0)
    inventory, heads = _heads(Net(), _inputs())
    assert inventory.tracer == "fx"
    assert [c.id for c in heads] == [
        *(f"attn.heads[{h}]" for h in range(4)),
        "mha.heads[0]",
        "mha.heads[1]",
        "marked.heads[0]",
        "marked.heads[1]",
    ]
    by_id = {c.id: c for c in heads}
    assert by_id["attn.heads[1]"].slices == (
        ("attn.qkv.weight", 0, 4, 8),
        ("attn.qkv.weight", 0, 20, 24),
        ("attn.qkv.weight", 0, 36, 40),
        ("attn.qkv.bias", 0, 4, 8),
        ("attn.qkv.bias", 0, 20, 24),
        ("attn.qkv.bias", 0, 36, 40),
        ("attn.proj.weight", 1, 4, 8),
    )
    assert by_id["mha.heads[1]"].out_proj == "mha.out_proj"
    assert by_id["mha.heads[1]"].slices[-1] == ("mha.out_proj.weight", 1, 8, 16)
    assert by_id["attn.heads[1]"].params == 3 * 4 * 16 + 3 * 4 + 16 * 4
    assert all(c.methods == ("mask", "mean") for c in heads)


def test_mask_equals_a_hand_written_per_head_forward():
    torch.manual_seed(0)
    attn, x = TimmAttention().eval(), _inputs()
    for head in range(4):
        ablated = TimmAttention().eval()
        ablated.load_state_dict(attn.state_dict())
        ablate_head(ablated, "proj", HeadMaskAblation(4, head))
        expected = attn(x, drop_head=head)
        assert torch.allclose(ablated(x), expected, atol=TOL)
        assert not torch.allclose(attn(x), expected, atol=TOL)


def _surgery(model: nn.Module, out_proj: str, lo: int, hi: int, mean=None) -> None:
    """The reference for a head ablation by weight edits: its columns of the output
    projection zeroed; for mean, their product with the head's mean in the bias."""
    proj = model.get_submodule(out_proj)
    with torch.no_grad():
        if mean is not None:
            proj.bias += proj.weight[:, lo:hi] @ mean
        proj.weight[:, lo:hi] = 0


def _head_mean(model: nn.Module, out_proj: str, x: torch.Tensor, lo: int, hi: int):
    seen = []
    handle = model.get_submodule(out_proj).register_forward_pre_hook(
        lambda m, args: seen.append(args[0].detach())
    )
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0].reshape(-1, seen[0].shape[-1])[:, lo:hi].mean(dim=0)


@pytest.mark.parametrize("method", ["mask", "mean"])
@pytest.mark.parametrize(
    "head_id", ["attn.heads[2]", "mha.heads[1]", "marked.heads[0]"]
)
def test_ablate_head_equals_weight_surgery(method, head_id):
    torch.manual_seed(0)
    model, x = Net().eval(), _inputs()
    _, heads = _heads(model, x)
    comp = next(c for c in heads if c.id == head_id)
    lo, hi = comp.units
    if comp.out_proj == "mha.out_proj":  # MHA calls it functionally: measure by hand
        mean = _mha_head_mean(model.mha, model, x, lo, hi)
    else:
        mean = _head_mean(model, comp.out_proj, x, lo, hi)
    reference = Net().eval()
    reference.load_state_dict(model.state_dict())
    _surgery(reference, comp.out_proj, lo, hi, mean if method == "mean" else None)
    ablated = Net().eval()
    ablated.load_state_dict(model.state_dict())
    op = (
        HeadMaskAblation(comp.num_heads, comp.head)
        if method == "mask"
        else HeadMeanAblation(comp.num_heads, comp.head, mean).eval()
    )
    ablate_head(ablated, comp.out_proj, op)
    with torch.no_grad():
        assert torch.allclose(ablated(x), reference(x), atol=TOL)
        assert not torch.allclose(model(x), reference(x), atol=TOL)


def _mha_head_mean(mha, model, x, lo, hi):
    """nn.MultiheadAttention's per-head output, written out by hand (its in_proj,
    softmax(q k^T / sqrt(d)) v), at the input the model gives it."""
    seen = []
    handle = mha.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        model(x)
    handle.remove()
    h = seen[0]
    q, k, v = F.linear(h, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
    d = mha.head_dim
    split = lambda t: t.reshape(*t.shape[:2], mha.num_heads, d).transpose(1, 2)  # noqa
    att = torch.softmax(split(q) @ split(k).transpose(-2, -1) / math.sqrt(d), dim=-1)
    y = (att @ split(v)).transpose(1, 2).reshape(h.shape)
    return y.reshape(-1, y.shape[-1])[:, lo:hi].mean(dim=0)


def test_knockout_of_heads_fast_equals_naive_equals_hand_written():
    gpt = tiny_gpt()
    torch.manual_seed(0)
    model = gpt.TinyGPT().eval()
    x_train, _, x_val, y_val = (t[:200] for t in gpt.build_data())
    inventory = build_inventory(model, (x_val[:2],), "tiny", 4)
    assert inventory.tracer == "fx"
    heads = [c for c in inventory.components if c.kind == "head"]
    groups = [c for c in inventory.components if c.id.startswith("h.0.mlp.fc[")]
    assert len(heads) == 8 and len(groups) == 4
    specs = [ablation_spec(c, m) for c in heads for m in c.methods]
    specs += [ablation_spec(c, "mask") for c in groups]
    knockouts = knockouts_for(inventory, specs)
    means = activation_means(model, knockouts, x_train, 64)
    correct = lambda out, y: (float((out.argmax(1) == y).sum()), len(y))  # noqa
    val = Validation(x_val, y_val, F.cross_entropy, correct)
    fast = evaluate_fast(model, knockouts, means, val)
    naive = evaluate_naive(model, knockouts, means, val)
    assert fast.stats["max_copies"] > 1
    assert all(s.path == "fast" and s.status == "ok" for s in fast.scores)
    for f, n in zip(fast.scores, naive):
        assert abs(f.metrics.loss - n.metrics.loss) <= TOL, (f, n)
    # the hand-written reference for one head: zero its slice before proj
    attn = model.h[1].attn
    handle = attn.proj.register_forward_pre_hook(
        lambda m, args: (args[0].clone().index_fill_(-1, torch.arange(16, 24), 0.0),)
    )
    with torch.no_grad():
        loss = float(F.cross_entropy(model(x_val), y_val))
    handle.remove()
    score = next(s for s in fast.scores if s.variant_id == "h.1.attn.heads[2]:mask")
    assert abs(score.metrics.loss - loss) <= TOL


def test_head_mean_in_knockout_is_the_training_mean_over_positions():
    gpt = tiny_gpt()
    torch.manual_seed(0)
    model = gpt.TinyGPT().eval()
    x_train, _, x_val, y_val = (t[:120] for t in gpt.build_data())
    inventory = build_inventory(model, (x_val[:2],), "tiny", 4)
    comp = inventory.get("h.0.attn.heads[3]")
    knockouts = knockouts_for(inventory, [ablation_spec(comp, "mean")])
    report = run_knockouts(
        model, knockouts, x_train, x_val, y_val, F.cross_entropy,
        lambda out, y: (float((out.argmax(1) == y).sum()), len(y)),
    )  # fmt: skip
    mean = _head_mean(model, "h.0.attn.proj", x_train, 24, 32)
    reference = gpt.TinyGPT().eval()
    reference.load_state_dict(model.state_dict())
    _surgery(reference, "h.0.attn.proj", 24, 32, mean)
    with torch.no_grad():
        loss = float(F.cross_entropy(reference(x_val), y_val))
    assert abs(report.scores[0].metrics.loss - loss) <= TOL


def test_kinds_heads_without_attention_is_one_clear_error():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    inventory = build_inventory(model, (torch.randn(2, 4),), "class MLP", None)
    with pytest.raises(ComponentError) as info:
        plan_variants(inventory, parse_kinds("heads"))
    text = str(info.value)
    assert "no attention module" in text and "nn.MultiheadAttention" in text
    assert "ablagen_heads = (num_heads, 'out_proj_name')" in text


def test_a_bad_marker_is_a_warning():
    class Bad(nn.Module):
        ablagen_heads = (3, "nowhere")

        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 6)

        def forward(self, x):
            return self.fc(x)

    inventory = build_inventory(Bad(), (torch.randn(2, 6),), "bad", None)
    assert any("ablagen_heads names 'nowhere'" in w for w in inventory.warnings)
    assert not inventory.of_kinds(("head",))


def _row(variant: str, kind: str, mean: float) -> ImportanceRow:
    comp, method = variant.rsplit(":", 1)
    return ImportanceRow(
        0, variant, comp, kind, method, mean, 0.01, 5, mean - 0.01, mean + 0.01,
        False, (0,), (mean,), 0.9, 0.9 - mean,
    )  # fmt: skip


def test_a_heads_noise_scale_reaches_exactly_its_slices():
    torch.manual_seed(0)
    model, x = Net().eval(), _inputs()
    inventory, _ = _heads(model, x)
    manifest = Manifest(
        "0.1.0",
        "knockout",
        {"path": "m.py", "parameters": [[n, list(s)] for n, s in inventory.parameters]},
        {},
        (),
        tuple(c.to_json() for c in inventory.components),
    )
    rows = [
        _row("attn.heads[1]:mask", "head", 0.5),
        _row("mha.heads[0]:mask", "head", 0.2),
    ]
    rows.append(_row("out:zero", "layer", 0.1))
    ranking = Ranking(
        "val_acc", True, 0.95, {}, (0,), 0.9, ((0, "ok"),), tuple(rows), ()
    )
    scales = noise_scales(manifest, ranking, 0.1, 2.0, 1.0, default=1.0).parameters
    top, mid = 0.1, scales["mha.in_proj_weight"][0]
    assert 0.1 < mid < 2.0
    qkv = scales["attn.qkv.weight"]  # rows, dim 0: head 1 owns 4..8, 20..24, 36..40
    assert [i for i, s in enumerate(qkv) if s == top] == [
        *range(4, 8), *range(20, 24), *range(36, 40)
    ]  # fmt: skip
    assert all(s == 1.0 for i, s in enumerate(qkv) if s != top)
    proj = scales["attn.proj.weight"]  # columns: dim 1
    assert proj["dim"] == 1
    assert [i for i, s in enumerate(proj["units"]) if s == top] == [4, 5, 6, 7]
    assert scales["attn.proj.bias"] == 1.0  # the projection's bias is shared
    mha = scales["mha.in_proj_weight"]
    assert [i for i, s in enumerate(mha) if s == mid] == [
        *range(0, 8), *range(16, 24), *range(32, 40)
    ]  # fmt: skip
    assert scales["mha.out_proj.weight"]["units"][:8] == (mid,) * 8
    assert scales["mha.out_proj.weight"]["units"][8:] == (1.0,) * 8
    assert scales["marked.a.weight"] == 1.0  # unranked


def test_every_kind_is_ranked():
    from ablagen.analyze import KINDS
    from ablagen.core.studydir import ABLATION_KINDS

    assert set(ABLATION_KINDS) == set(KINDS)


def test_embeddings_and_norms_are_layers():
    model = nn.Sequential(nn.Embedding(10, 8), nn.RMSNorm(8), nn.LayerNorm(8))
    inventory = build_inventory(model, (torch.randint(0, 10, (2, 5)),), "m", None)
    methods = {c.op: c.methods for c in inventory.components if c.kind == "layer"}
    assert methods["Embedding"] == ("zero", "mean")  # int ids in, vectors out
    assert methods["RMSNorm"][0] == methods["LayerNorm"][0] == "identity"


@pytest.mark.slow
def test_tiny_gpt_trains_on_a_text_file_and_scores_its_heads(tmp_path, capsys):
    """examples/tiny_gpt.py:build_lm with --task lm on a small text file, knockout."""
    import json
    import random
    import subprocess
    import sys

    from conftest import run_cli

    words = "the cat sat on a mat and the dog ran to the cat then a bird sang".split()
    rng = random.Random(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(rng.choice(words) for _ in range(2000)))
    out = tmp_path / "study"
    code, _, err = run_cli(
        ["generate", f"{EXAMPLES / 'tiny_gpt.py'}:build_lm", "--dataset",
         f"text:{corpus}", "--task", "lm", "--kinds", "heads", "--mode", "knockout",
         "--epochs", "1", "--out", out],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    for script in ("baseline.py", "knockout.py"):  # baseline.py trains, knockout loads
        run = subprocess.run(
            [sys.executable, script, "--out", f"{script}.json",
             "--checkpoint", str(tmp_path / "baseline.pt")],
            cwd=out, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
    trained = json.loads((out / "baseline.py.json").read_text())["final"]
    result = json.loads((out / "knockout.py.json").read_text())
    variants = result["variants"]
    assert variants["baseline"]["final"]["val_loss"] == pytest.approx(
        trained["val_loss"], rel=1e-5
    )  # the knockout's baseline is baseline.py's model
    heads = {k: v for k, v in variants.items() if ".heads[" in k}
    assert len(heads) == 8 and all(v["status"] == "ok" for v in heads.values())
    for vid, entry in variants.items():  # perplexity is exp of the token loss
        final = entry["final"]
        assert final["val_ppl"] == pytest.approx(math.exp(final["val_loss"])), vid
    assert len({v["final"]["val_loss"] for v in heads.values()}) > 1
