"""benchmarks/bench_loop.py compares like with like: its hand-written loop and the generated
baseline.py's train() do the same work, so on CPU, seeded alike, they end with the same
train loss and the same weights, bit for bit (the generated side's weights read back
from its --checkpoint file)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_loop  # noqa: E402


@pytest.mark.parametrize(
    "options",
    [{}, {"amp": "bf16", "grad_accum": 2}],
    ids=["plain", "bf16-accum2"],
)
def test_hand_loop_matches_generated_loop(tmp_path, options):
    loop = bench_loop.Loop(epochs=1, **options)
    side = bench_loop.prepare("digits_cnn", loop, tmp_path)
    assert side.missing == []  # the generated script has code for every option
    generated = bench_loop.generated_train(side, loop, tmp_path)
    hand = bench_loop.hand_train(side, loop)
    assert hand.train_loss == generated.train_loss
    assert generated.weights.keys() == hand.weights.keys()
    for name, tensor in hand.weights.items():
        assert torch.equal(generated.weights[name], tensor), name
    # and the comparison is not vacuous: training moved the weights off their start
    torch.manual_seed(loop.seed)
    start = getattr(side.example, side.factory)().state_dict()
    assert not torch.equal(start["fc2.weight"], hand.weights["fc2.weight"])
