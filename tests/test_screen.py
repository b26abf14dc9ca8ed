"""The screen's estimates against exact knockouts (torch), its curvature rows against
torch's Hessian, its memory chunking, and its bad-input cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ablagen.knockout_engine import Knockout, run_knockouts
from ablagen.screen import ggn_directions, screen_batches, screen_knockouts


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)

    def forward(self, x):
        return x + self.lin(x)


class Linear(nn.Module):
    """Linear all the way to a linear loss: first order is exact for every ablation."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 6)
        self.block = Block()
        self.unused = nn.Linear(6, 3)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        h = self.block(self.b(self.a(x)))
        self.unused(h)  # its output reaches no loss: every estimate of it is 0
        return self.head(h)


def linear_loss(output, y):
    return (output * y).sum(dim=1).mean()


def no_accuracy(output, y):
    return 0.0, len(y)


KNOCKOUTS = [
    Knockout("a:zero", "zero", module="a"),
    Knockout("a:mean", "mean", module="a"),
    Knockout("b:identity", "identity", module="b"),
    Knockout("a[0]:mask", "mask", module="a", units=(0, 3), unit_dim=1),
    Knockout("a[1]:mask", "mask", module="a", units=(3, 6), unit_dim=1),
    Knockout("b:mean", "mean", module="b"),
    Knockout("block:identity", "identity", module="block", block=True),
    Knockout("block:zero", "zero", module="block", block=True),
    Knockout("head:zero", "zero", module="head"),
]


def _data(n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    y = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return x, y


def _exact(model, knockouts, x_train, x, y, loss_fn, correct_fn):
    report = run_knockouts(model, knockouts, x_train, x, y, loss_fn, correct_fn)
    return {
        s.variant_id: s.metrics.loss - report.baseline.loss for s in report.scores
    }, report.baseline.loss


def test_each_estimate_matches_the_exact_change_on_a_linear_model():
    torch.manual_seed(0)
    model = Linear().double().eval()
    x_train, _ = _data(80, 1)
    x, y = _data()
    exact, base = _exact(model, KNOCKOUTS, x_train, x, y, linear_loss, no_accuracy)
    report = screen_knockouts(
        model, KNOCKOUTS, x_train, x, y, linear_loss, no_accuracy, curvature="none"
    )
    assert report.baseline.loss == pytest.approx(base, abs=1e-12)
    for k, est in zip(KNOCKOUTS, report.estimates):
        assert est.status == "ok", est.error
        assert est.delta_loss == pytest.approx(exact[k.variant_id], abs=1e-5), k
        assert est.curvature == 0.0


def test_a_component_the_loss_does_not_read_is_estimated_as_zero():
    model = Linear().double().eval()
    x, y = _data()
    k = Knockout("unused:zero", "zero", module="unused")
    (est,) = screen_knockouts(model, [k], x, x, y, linear_loss, no_accuracy).estimates
    assert (est.status, est.delta_loss, est.first_order) == ("ok", 0.0, 0.0)


def test_with_every_knockout_skipped_the_baseline_is_still_measured():
    model = Linear().double().eval()
    x, y = _data()
    k = Knockout("nope:zero", "zero", module="nope")  # no such module
    report = screen_knockouts(model, [k], x, x, y, linear_loss, no_accuracy)
    assert report.estimates[0].status == "skipped"
    assert report.baseline.loss == pytest.approx(
        linear_loss(model(x), y).item(), abs=1e-12
    )


class Curved(nn.Module):
    """Logits linear in ``a``'s output, scored by cross-entropy: the Gauss-Newton term
    is the exact second-order term of each knockout."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.a(x))


def _ggn_case(classes=5, samples=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(samples, classes, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (samples,), generator=g)
    zz = z.clone().requires_grad_(True)
    (gz,) = torch.autograd.grad(F.cross_entropy(zz, y, reduction="sum"), zz)
    hessians = [
        torch.autograd.functional.hessian(
            lambda v: F.cross_entropy(v.unsqueeze(0), y[n : n + 1]), z[n]
        )
        for n in range(samples)
    ]
    d = torch.randn(samples, classes, generator=g, dtype=torch.float64)
    return z, gz, hessians, d


def _ggn_term(z, gz, rank, d):
    """``1/2 |R c|^2`` per sample, ``c`` the products of ``d`` with the directions."""
    rows, maps, _ = ggn_directions(z, gz, rank)
    basis = torch.cat([gz.unsqueeze(0), rows])  # (r, N, C)
    c = torch.einsum("rnc,nc->nr", basis, d)
    return 0.5 * torch.einsum("nkr,nr->nk", maps, c).square().sum(dim=1), basis


def test_ggn_directions_give_the_cross_entropy_hessian_at_full_rank():
    z, gz, hessians, d = _ggn_case()
    got, basis = _ggn_term(z, gz, rank=5, d=d)
    assert len(basis) == 5  # the gradient and all 4 eigenvectors of the range
    for n, h in enumerate(hessians):
        assert got[n].item() == pytest.approx((0.5 * d[n] @ h @ d[n]).item(), abs=1e-12)


def test_ggn_directions_restrict_the_hessian_to_their_span():
    """Rank 2 (the default): the gradient and the top eigenvector. The term is
    ``1/2 d^T P H P d``, P the projection onto their span (from torch's QR), exact
    for a change inside that span; the second row is H's top eigenvector."""
    z, gz, hessians, d = _ggn_case(classes=6, samples=4, seed=1)
    got, basis = _ggn_term(z, gz, rank=2, d=d)
    assert len(basis) == 2 and torch.equal(basis[0], gz)
    inside = 0.7 * gz - 1.3 * basis[1]
    on_span, _ = _ggn_term(z, gz, rank=2, d=inside)
    for n, h in enumerate(hessians):
        top = torch.linalg.eigh(h)[1][:, -1]
        assert abs(top @ basis[1, n]).item() == pytest.approx(1.0, abs=1e-9)
        q, _ = torch.linalg.qr(basis[:, n].T)
        p = q @ q.T
        assert got[n].item() == pytest.approx(
            (0.5 * d[n] @ p @ h @ p @ d[n]).item(), abs=1e-12
        )
        assert on_span[n].item() == pytest.approx(
            (0.5 * inside[n] @ h @ inside[n]).item(), abs=1e-12
        )


def test_the_gauss_newton_term_is_the_second_order_term_of_small_knockouts():
    """Knock out a sliver of ``a``'s output (one unit, scaled down): the exact change
    and first + second order agree to third order, first order alone does not."""
    torch.manual_seed(1)
    model = Curved().double().eval()
    with torch.no_grad():
        model.a.weight.mul_(1e-3)
        model.a.bias.mul_(1e-3)
    x = torch.randn(40, 4, dtype=torch.float64)
    y = torch.randint(0, 5, (40,))
    ks = [
        Knockout(f"a[{i}]:mask", "mask", module="a", units=(i, i + 1), unit_dim=1)
        for i in range(8)
    ]
    exact, _ = _exact(model, ks, x, x, y, F.cross_entropy, no_accuracy)
    report = screen_knockouts(  # every direction, on every sample
        model, ks, x, x, y, F.cross_entropy, no_accuracy, ggn_rank=5, ggn_share=1.0
    )
    misses = []
    for k, est in zip(ks, report.estimates):
        second = abs(est.curvature)
        assert est.delta_loss == pytest.approx(
            exact[k.variant_id], abs=1e-3 * second + 1e-12
        )
        misses.append(abs(est.first_order - exact[k.variant_id]) / second)
    assert max(misses) > 0.5  # first order alone misses the curvature


def test_chunking_keeps_within_the_budget_and_changes_nothing():
    torch.manual_seed(0)
    model = Linear().double().eval()
    x, y = _data(200)
    units = [  # many knockouts on two outputs: their products need several groups
        Knockout(f"{m}[{u}]:mask", "mask", module=m, units=(u, u + 1), unit_dim=1)
        for m in ("a", "b")
        for u in range(6)
    ]
    ks = KNOCKOUTS + units
    wide = screen_knockouts(model, ks, x, x, y, linear_loss, no_accuracy)
    budget_mb = 0.004  # about 4 KB: a few samples, one group of outputs at a time
    narrow = screen_knockouts(
        model, ks, x, x, y, linear_loss, no_accuracy, max_batch_mb=budget_mb
    )
    assert wide.stats["groups"] == 1 and narrow.stats["groups"] > 1
    assert narrow.stats["chunk_samples"] < wide.stats["chunk_samples"]
    assert narrow.stats["kept_peak_bytes"] <= budget_mb * 2**20
    assert wide.stats["kept_peak_bytes"] > budget_mb * 2**20
    for a, b in zip(wide.estimates, narrow.estimates):
        assert b.delta_loss == pytest.approx(a.delta_loss, abs=1e-9)


def _curved_case(samples=41, seed=2):
    torch.manual_seed(seed)
    model = Curved().double().eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (samples,), generator=g)
    ks = [
        Knockout("a:zero", "zero", module="a"),
        Knockout("head:zero", "zero", module="head"),
    ]
    ks += [
        Knockout(f"a[{i}]:mask", "mask", module="a", units=(i, i + 2), unit_dim=1)
        for i in range(0, 8, 2)
    ]
    return model, ks, x, y


def test_the_share_measures_the_excess_over_the_gradient_term_on_the_first_samples():
    """With ``ggn_share`` < 1 the term is the rank-1 one (along the gradient) on every
    sample, plus the rank-2 term's excess over it measured on the first samples only:
    three screens with every direction on the samples they see give the same."""
    model, ks, x, y = _curved_case()
    half = 21  # ceil(0.5 * 41)

    def curvature(rows, rank, **kw):
        report = screen_knockouts(
            model, ks, x[:rows], x[:rows], y[:rows], F.cross_entropy, no_accuracy,
            ggn_rank=rank, **kw,
        )  # fmt: skip
        return report

    shared = curvature(41, 2, ggn_share=0.5)
    assert shared.stats["ggn_samples"] == half and shared.stats["gradient_rows"] == 2
    every = curvature(41, 1)
    rank2_half, rank1_half = curvature(half, 2, ggn_share=1.0), curvature(half, 1)
    for got, a, b, c in zip(
        shared.estimates, every.estimates, rank2_half.estimates, rank1_half.estimates
    ):
        assert got.first_order == pytest.approx(a.first_order, abs=1e-12)
        want = a.curvature + b.curvature - c.curvature
        assert got.curvature == pytest.approx(want, rel=1e-9, abs=1e-15)
        assert abs(b.curvature - c.curvature) > 1e-6 * abs(c.curvature)  # an excess


def test_chunking_changes_no_gauss_newton_estimate():
    model, ks, x, y = _curved_case(samples=200)
    wide = screen_knockouts(model, ks, x, x, y, F.cross_entropy, no_accuracy)
    narrow = screen_knockouts(
        model, ks, x, x, y, F.cross_entropy, no_accuracy, max_batch_mb=0.002
    )
    assert narrow.stats["chunk_samples"] < wide.stats["chunk_samples"] // 4
    assert wide.curvature == narrow.curvature == "ggn"
    for a, b in zip(wide.estimates, narrow.estimates):
        assert b.first_order == pytest.approx(a.first_order, rel=1e-9, abs=1e-15)
        assert b.curvature == pytest.approx(a.curvature, rel=1e-9, abs=1e-15)


class Detached(nn.Module):
    """``b`` reads ``a``'s output detached: a backward pass to ``a`` does not run
    through ``b``, whose gradient then needs a call of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        h = self.a(x)
        return self.head(h + self.b(h.detach()))


def test_an_output_the_backward_pass_to_the_earliest_does_not_reach():
    torch.manual_seed(0)
    model = Detached().double().eval()
    x_train, _ = _data(80, 1)
    x, y = _data()
    ks = [
        Knockout("a:zero", "zero", module="a"),
        Knockout("b:zero", "zero", module="b"),
        Knockout("b[0]:mask", "mask", module="b", units=(0, 2), unit_dim=1),
    ]
    exact, _ = _exact(model, ks, x_train, x, y, linear_loss, no_accuracy)
    report = screen_knockouts(model, ks, x_train, x, y, linear_loss, no_accuracy)
    assert all(est.status == "ok" for est in report.estimates)
    for k, est in zip(ks[1:], report.estimates[1:]):  # a's change also goes on detached
        assert abs(exact[k.variant_id]) > 1e-3
        assert est.delta_loss == pytest.approx(exact[k.variant_id], abs=1e-5), k


class Indexed(nn.Module):
    """An integer output first (no gradient), then an embedding it feeds."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(4, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        picked = x.argmax(dim=1)  # integer, from the input
        return self.head(self.emb(picked)) + x[:, :2]


def test_an_output_fed_only_by_an_integer_one():
    torch.manual_seed(0)
    model = Indexed().double().eval()
    x, y = _data()
    ks = [
        Knockout("argmax:zero", "zero", node="argmax"),
        Knockout("emb:zero", "zero", module="emb"),
    ]
    exact, _ = _exact(model, ks, x, x, y, linear_loss, no_accuracy)
    skipped, est = screen_knockouts(
        model, ks, x, x, y, linear_loss, no_accuracy
    ).estimates
    assert skipped.status == "skipped" and "argmax" in skipped.error
    assert est.status == "ok" and abs(exact["emb:zero"]) > 1e-3
    assert est.delta_loss == pytest.approx(exact["emb:zero"], abs=1e-5)


class Integer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        picked = h.argmax(dim=1)  # integer: no gradient
        return h + picked.unsqueeze(1).to(h.dtype)


def test_a_non_differentiable_output_is_skipped_with_its_name():
    model = Integer().double().eval()
    x, y = _data()
    ks = [
        Knockout("argmax:zero", "zero", node="argmax"),
        Knockout("a:zero", "zero", module="a"),
    ]
    skipped, ok = screen_knockouts(
        model, ks, x, x, y, linear_loss, no_accuracy
    ).estimates
    assert skipped.status == "skipped" and "argmax" in skipped.error
    assert "not differentiable" in skipped.error
    assert ok.status == "ok"


def test_taylor_screen_with_val_acc_is_one_line_exit_2(tmp_path, capsys):
    from conftest import EXAMPLES, run_cli

    for mode in ("screen", "two-stage"):
        out = tmp_path / mode
        args = ["study", EXAMPLES / "digits_cnn.py", "--out", out, "--mode", mode]
        code, stdout, stderr = run_cli([*args, "--metric", "val_acc"], capsys)
        assert code == 2 and not out.exists()
        assert "estimates changes of the validation loss, not val_acc" in stderr
        assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1


class Heads(nn.Module):
    """Two "heads" side by side in the last dim of a projection's input, over a few
    positions; linear all the way to a linear loss, so first order is exact."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(4, 8)
        self.proj = nn.Linear(8, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):  # x: (N, T, 4)
        return self.head(self.proj(self.mix(x))).sum(dim=1)


def test_head_estimates_match_the_exact_change_on_a_linear_model():
    torch.manual_seed(0)
    model = Heads().double().eval()
    g = torch.Generator().manual_seed(3)
    x_train = torch.randn(60, 5, 4, generator=g, dtype=torch.float64)
    x = torch.randn(40, 5, 4, generator=g, dtype=torch.float64)
    y = torch.randn(40, 2, generator=g, dtype=torch.float64)
    ks = [
        Knockout(f"proj.h{h}:{m}", m, out_proj="proj", head=h, num_heads=2)
        for h in range(2)
        for m in ("mask", "mean")
    ]
    exact, _ = _exact(model, ks, x_train, x, y, linear_loss, no_accuracy)
    report = screen_knockouts(model, ks, x_train, x, y, linear_loss, no_accuracy)
    for k, est in zip(ks, report.estimates):
        assert est.status == "ok", est.error
        assert est.delta_loss == pytest.approx(exact[k.variant_id], abs=1e-5), k
        assert abs(exact[k.variant_id]) > 1e-3  # a real change, not 0 == 0


def test_sliced_estimates_equal_the_operators_own():
    """The vectorized path (masks, heads, zero: per-unit sums times a matrix) gives
    the numbers the operator's own ``apply`` gives, one knockout at a time."""
    from ablagen.ablate import HeadMeanAblation, MaskAblation, ZeroAblation
    from ablagen.screen import products
    from ablagen.screen.estimates import slice_of, slice_products

    g = torch.Generator().manual_seed(0)
    value = torch.randn(5, 6, 3, 4, generator=g, dtype=torch.float64)
    grads = torch.randn(3, *value.shape, generator=g, dtype=torch.float64)
    mean = torch.randn(2, generator=g, dtype=torch.float64)
    ops = [MaskAblation(1, 0, 2), MaskAblation(1, 5, 6), MaskAblation(-2, 1, 3),
           ZeroAblation(), HeadMeanAblation(2, 1, mean).eval()]  # fmt: skip
    got = slice_products(value, grads, [slice_of(op, value) for op in ops])
    for op, row in zip(ops, got):
        assert torch.allclose(row, products(op, value, None, [grads]), atol=1e-12)


def test_attention_heads_of_a_tiny_gpt_against_exact_knockout():
    """A closeness check where the estimate is not exact: the heads (mask) of an
    untrained tiny GPT, small moves on a curved loss (LayerNorm, softmax attention,
    cross-entropy). The screen's default estimate is within a fifth of the largest
    exact change everywhere, and ranks the eight heads as exact knockout does."""
    import importlib.util

    from conftest import EXAMPLES

    from ablagen.study.pipeline import spearman

    spec = importlib.util.spec_from_file_location("tiny_gpt", EXAMPLES / "tiny_gpt.py")
    gpt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpt)
    torch.manual_seed(0)
    model = gpt.TinyGPT().double().eval()
    x_train, _, x, y = gpt.build_data()
    ks = [
        Knockout(f"h.{b}.attn.proj.h{h}:mask", "mask", out_proj=f"h.{b}.attn.proj",
                 head=h, num_heads=4)  # fmt: skip
        for b in range(2)
        for h in range(4)
    ]
    exact, _ = _exact(model, ks, x_train, x, y, F.cross_entropy, no_accuracy)
    report = screen_knockouts(model, ks, x_train, x, y, F.cross_entropy, no_accuracy)
    assert report.curvature == "ggn"
    est = {e.variant_id: e.delta_loss for e in report.estimates}
    ids = [k.variant_id for k in ks]
    scale = max(abs(exact[v]) for v in ids)
    assert scale > 1e-3  # the heads matter
    assert max(abs(est[v] - exact[v]) for v in ids) < 0.2 * scale
    assert spearman([est[v] for v in ids], [exact[v] for v in ids]) > 0.95


def _loader(x, y, batch_size):
    data = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(data, batch_size=batch_size)


@pytest.mark.parametrize("batch_size", [1, 7, 41])
def test_a_streamed_screen_gives_the_in_memory_estimates(batch_size):
    """Batches from a DataLoader (1 sample, 7 with a short last one, all in one)
    against the same data as tensors: the same estimates, the Gauss-Newton share
    (the first 21 of 41 samples) cut across batches as across passes."""
    model, ks, x, y = _curved_case()
    ks = ks + [Knockout("a:mean", "mean", module="a")]
    held = screen_knockouts(model, ks, x, x, y, F.cross_entropy, no_accuracy)
    streamed = screen_batches(
        model, ks, x, _loader(x, y, batch_size), len(x), F.cross_entropy, no_accuracy
    )
    assert streamed.stats["ggn_samples"] == held.stats["ggn_samples"] == 21
    assert streamed.baseline.loss == pytest.approx(held.baseline.loss, rel=1e-12)
    for a, b in zip(held.estimates, streamed.estimates, strict=True):
        assert (
            (a.variant_id, a.status) == (b.variant_id, b.status) == (a.variant_id, "ok")
        )
        assert b.first_order == pytest.approx(a.first_order, rel=1e-9, abs=1e-15)
        assert b.curvature == pytest.approx(a.curvature, rel=1e-9, abs=1e-15)


def test_a_streamed_screen_keeps_each_pass_within_the_budget():
    """A loader batch larger than a pass may hold is cut into passes, as in memory."""
    model, ks, x, y = _curved_case(samples=200)
    held = screen_knockouts(
        model, ks, x, x, y, F.cross_entropy, no_accuracy, max_batch_mb=0.002
    )
    streamed = screen_batches(
        model, ks, x, _loader(x, y, 200), len(x), F.cross_entropy, no_accuracy,
        max_batch_mb=0.002,
    )  # fmt: skip
    assert streamed.stats["chunk_samples"] == held.stats["chunk_samples"] < 50
    assert streamed.stats["kept_peak_bytes"] == held.stats["kept_peak_bytes"]
    for a, b in zip(held.estimates, streamed.estimates, strict=True):
        assert b.delta_loss == pytest.approx(a.delta_loss, rel=1e-9, abs=1e-15)


def test_a_stream_of_unknown_length_gives_every_sample_every_direction():
    """samples=None (an iterable dataset): as ggn_share=1 on the same data in memory."""
    model, ks, x, y = _curved_case()
    held = screen_knockouts(
        model, ks, x, x, y, F.cross_entropy, no_accuracy, ggn_share=1.0
    )
    batches = ((x[i : i + 8], y[i : i + 8]) for i in range(0, len(x), 8))
    streamed = screen_batches(model, ks, x, batches, None, F.cross_entropy, no_accuracy)
    assert streamed.stats["ggn_samples"] == held.stats["ggn_samples"] == 41
    for a, b in zip(held.estimates, streamed.estimates, strict=True):
        assert b.delta_loss == pytest.approx(a.delta_loss, rel=1e-9, abs=1e-15)


def test_a_stream_shorter_than_announced_fails_loudly():
    model, ks, x, y = _curved_case()
    with pytest.raises(ValueError, match="held 41 validation samples, not 50"):
        screen_batches(model, ks, x, _loader(x, y, 8), 50, F.cross_entropy, no_accuracy)


@pytest.mark.parametrize("batch_size", [7, 64])
def test_the_hook_path_gives_the_graphs_estimates(batch_size):
    """traced=False (a model torch.fx cannot trace): probes on hooks give the graph
    path's first-order estimates (exact on the linear model: every method, blocks,
    heads) and its Gauss-Newton term along the gradient (rank 1) on a curved one."""
    torch.manual_seed(0)
    model = Linear().double().eval()
    x, y = _data(50)
    graph = screen_knockouts(model, KNOCKOUTS, x, x, y, linear_loss, no_accuracy)
    hooks = screen_batches(
        model, KNOCKOUTS, x, _loader(x, y, 20), 50, linear_loss, no_accuracy,
        batch_size=batch_size, traced=False,
    )  # fmt: skip
    exact, _ = _exact(model, KNOCKOUTS, x, x, y, linear_loss, no_accuracy)
    assert hooks.stats["path"] == "hooks"
    assert hooks.baseline.loss == pytest.approx(graph.baseline.loss, rel=1e-12)
    for k, a, b in zip(KNOCKOUTS, graph.estimates, hooks.estimates, strict=True):
        assert b.status == "ok", b.error
        assert b.delta_loss == pytest.approx(a.delta_loss, rel=1e-9, abs=1e-15)
        assert b.delta_loss == pytest.approx(exact[k.variant_id], abs=1e-9)
    model, ks, x, y = _curved_case()
    graph = screen_knockouts(
        model, ks, x, x, y, F.cross_entropy, no_accuracy, ggn_rank=1
    )
    hooks = screen_knockouts(
        model, ks, x, x, y, F.cross_entropy, no_accuracy, batch_size=batch_size,
        traced=False,
    )  # fmt: skip
    assert hooks.curvature == graph.curvature == "ggn"
    for a, b in zip(graph.estimates, hooks.estimates, strict=True):
        assert b.first_order == pytest.approx(a.first_order, rel=1e-9, abs=1e-15)
        assert b.curvature == pytest.approx(a.curvature, rel=1e-9, abs=1e-15)
        assert b.curvature > 0


def test_the_hook_path_weighs_heads_and_skips_what_has_no_sample_axis():
    torch.manual_seed(0)
    model = Heads().double().eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 5, 4, generator=g, dtype=torch.float64)
    y = torch.randn(40, 2, generator=g, dtype=torch.float64)
    ks = [
        Knockout(f"proj.h{h}:mask", "mask", out_proj="proj", head=h, num_heads=2)
        for h in range(2)
    ]
    exact, _ = _exact(model, ks, x, x, y, linear_loss, no_accuracy)
    hooks = screen_knockouts(
        model, ks, x, x, y, linear_loss, no_accuracy, batch_size=16, traced=False
    )
    for k, est in zip(ks, hooks.estimates):
        assert est.delta_loss == pytest.approx(exact[k.variant_id], abs=1e-9)
        assert abs(exact[k.variant_id]) > 1e-3

    class Table(nn.Module):  # a parameter added to every sample: no sample axis
        def __init__(self):
            super().__init__()
            self.bias = nn.Embedding(1, 4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x + self.bias(torch.zeros(1, dtype=torch.long)))

    x, y = _data(10)
    ks = [
        Knockout("bias:zero", "zero", module="bias"),
        Knockout("fc:zero", "zero", module="fc"),
    ]
    skipped, ok = screen_knockouts(
        Table().double(), ks, x, x, y, linear_loss, no_accuracy, traced=False
    ).estimates
    assert skipped.status == "skipped" and "one value per sample" in skipped.error
    assert ok.status == "ok"
