"""PerturbedOptimizer's divergence signal: ``observe_loss`` makes no host read, and the
verdict read later (``diverged``, ``divergence_reason``) is the one the rule gives
judging each loss as it comes; the reference here is that rule, written out eagerly.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ablagen.perturb import PerturbedOptimizer
from ablagen.perturb.divergence import _Divergence
from hostreads import HostReads

NAN, INF = math.nan, math.inf


def eager(losses, factor: float = 10.0):
    """The rule, one loss at a time as the host sees it: (reason, first, best)."""
    first, best, reason = None, INF, None
    for loss in losses:
        loss = float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        if not math.isfinite(loss):
            reason = reason or f"loss is {loss}"
            continue
        first = loss if first is None else first
        if loss > max(factor * best, first):
            reason = reason or f"loss {loss:.4g} > {factor}x its best"
        best = min(best, loss)
    return reason, first, best


def walk(n: int, seed: int, spikes: dict[int, float] | None = None) -> list[float]:
    """A noisy decreasing training loss, with values put in at some steps."""
    g = torch.Generator().manual_seed(seed)
    noise = 1 + 0.3 * torch.rand(n, generator=g)
    values = (2.0 * torch.exp(-torch.arange(n) / 300) * noise).tolist()
    for step, value in (spikes or {}).items():
        values[step] = value
    return values


SEQUENCES = {
    "explodes": [2.0, 1.0, 9.0, 11.0, 0.5],
    "below_first": [5.0, 0.1, 2.0, 4.9, 6.0],  # 2.0 > 10 x 0.1 but not above 5.0
    "nan_first": [NAN, 3.0, 2.0, 40.0],
    "inf": [1.0, 2.0, INF, 0.5],
    "minus_inf": [1.0, -INF],
    "all_nan": [NAN, NAN],
    "calm": [3.0, 2.0, 2.5, 1.0],
    "drop_after": [1.0, 5.0, 0.1, 0.2],  # 5.0 is judged by the best before it
    "none": [],
    "walk": walk(1000, 0),
    "walk_nan": walk(1000, 1, {700: NAN, 800: 1e9}),
    "walk_spike": walk(1000, 2, {300: 1e3, 301: NAN}),
    "walk_late_spike": walk(1000, 3, {999: 1e4}),
}


def optimizer(**kwargs) -> PerturbedOptimizer:
    param = torch.nn.Parameter(torch.zeros(3))
    return PerturbedOptimizer(torch.optim.SGD([param], lr=0.1), **kwargs)


def verdict(opt: PerturbedOptimizer):
    state = opt.state_dict()["perturb"]["divergence"]
    return opt.divergence_reason, state["first_loss"], state["best_loss"]


@pytest.mark.parametrize("chunk", [3, 256, 10_000])  # folds on the device, or none
@pytest.mark.parametrize("name", SEQUENCES)
def test_the_lazy_verdict_is_the_eager_one(monkeypatch, name, chunk):
    monkeypatch.setattr(_Divergence, "CHUNK", chunk)
    losses = SEQUENCES[name]
    tensors = torch.tensor(losses, dtype=torch.float32).unbind() if losses else ()
    opt = optimizer()
    for loss in tensors:
        opt.observe_loss(loss)
    expected = eager(tensors)
    assert verdict(opt) == expected
    assert opt.diverged == (expected[0] is not None)


@pytest.mark.parametrize("name", ["explodes", "nan_first", "walk_nan", "walk_spike"])
def test_reading_in_between_changes_nothing(monkeypatch, name):
    monkeypatch.setattr(_Divergence, "CHUNK", 5)
    losses = torch.tensor(SEQUENCES[name]).unbind()
    opt = optimizer()
    for step, loss in enumerate(losses):
        opt.observe_loss(loss)
        if step % 7 == 0:  # a log line now and then
            assert opt.divergence_reason == eager(losses[: step + 1])[0]
    assert verdict(opt) == eager(losses)


def test_numbers_and_tensors_of_any_dtype_are_read_as_float_reads_them():
    g = torch.Generator().manual_seed(0)
    losses = [
        torch.tensor(2.5, dtype=torch.bfloat16),
        1.1,
        torch.tensor([1.3], dtype=torch.float16),  # one value, any shape
        torch.tensor(0.7, dtype=torch.float64, requires_grad=True) * 1,  # detached
        *(torch.rand(300, generator=g) + 0.5).unbind(),
        torch.tensor(70.0, dtype=torch.float16),
    ]
    opt = optimizer()
    for loss in losses:
        opt.observe_loss(loss)
    assert verdict(opt) == eager(losses)
    assert opt.divergence_reason == "loss 70 > 10.0x its best"


def test_a_tensor_of_many_losses_is_refused():
    with pytest.raises(ValueError, match=r"shape \(4,\).*loss.mean\(\)"):
        optimizer().observe_loss(torch.ones(4))


def test_observe_loss_makes_no_host_read(monkeypatch):
    opt = optimizer()
    losses = torch.tensor(walk(1000, 4, {600: 1e6})).unbind()  # 3 device folds
    with monkeypatch.context() as patch, HostReads(Path("-"), patch) as reads:
        for loss in losses:
            assert opt.observe_loss(loss) is None
    assert reads.events == []
    with monkeypatch.context() as patch, HostReads(Path("-"), patch) as reads:
        assert opt.diverged
    assert [e.what for e in reads.events] == ["tolist"]  # one read, then the verdict
    expected = eager(losses)[0]
    with monkeypatch.context() as patch, HostReads(Path("-"), patch) as reads:
        assert opt.diverged and opt.divergence_reason == expected
    assert reads.events == []  # nothing new observed: nothing read


def _grads(opt: PerturbedOptimizer, scale: float) -> None:
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.full_like(p, scale)


@pytest.mark.parametrize("loss_first", [True, False])
def test_loss_and_gradient_flags_keep_their_order(loss_first):
    """The first flag raised is the reason, as when each loss was judged at once."""
    opt = optimizer(sigma=0.0, grad_explosion_factor=100.0)
    for step in range(6):
        opt.observe_loss(torch.tensor(1.0))
        _grads(opt, 1.0)
        opt.step()
    opt.observe_loss(torch.tensor(1e3 if loss_first else 1.0))
    _grads(opt, 1e6)
    opt.step()  # the gradient norm explodes
    opt.observe_loss(torch.tensor(1e3))
    reason = opt.divergence_reason or ""
    assert reason.startswith("loss" if loss_first else "gradient norm"), reason


def test_a_resumed_optimizer_continues_the_verdict(monkeypatch):
    monkeypatch.setattr(_Divergence, "CHUNK", 16)
    losses = torch.tensor(walk(200, 5, {150: 50.0})).unbind()
    opt = optimizer()
    for loss in losses[:100]:
        opt.observe_loss(loss)
    state = opt.state_dict()
    assert set(state["perturb"]["divergence"]) == {
        *("loss_factor", "grad_factor", "first_loss", "best_loss"),
        *("first_norm", "mean_norm", "reason"),
    }  # the keys it always had: older checkpoints load
    resumed = optimizer()
    resumed.load_state_dict(state)
    for loss in losses[100:]:
        resumed.observe_loss(loss)
    assert verdict(resumed) == eager(losses)
    assert resumed.diverged
