"""The perturbation-aware optimizer, checked against torch as the reference."""

from __future__ import annotations

import copy
import io
import math
import os
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

from ablagen.perturb import buffers
from ablagen.perturb import (
    NOISE_KINDS,
    AdaptiveSchedule,
    AnnealedSchedule,
    CosineSchedule,
    ExponentialSchedule,
    NoiseBatch,
    NoiseKind,
    PerturbedOptimizer,
    StepSchedule,
    WarmupSchedule,
    make_noise,
    make_schedule,
    register_noise,
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models: one thread, or OpenMP waits on a busy machine cost 100x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    return torch.randn(8, 1, 8, 8, generator=gen), torch.randint(
        0, 3, (8,), generator=gen
    )


def _train(
    model: nn.Module, opt: torch.optim.Optimizer, steps: int, start: int = 0
) -> None:
    for step in range(start, start + steps):
        x, y = _batch(step)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda p, **kw: torch.optim.SGD(p, lr=0.1, **kw),
    "sgd_momentum": lambda p, **kw: torch.optim.SGD(p, lr=0.1, momentum=0.9, **kw),
    "nesterov": lambda p, **kw: torch.optim.SGD(
        p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, **kw
    ),
    "adam": lambda p, **kw: torch.optim.Adam(p, lr=1e-2, **kw),
    "adamw": lambda p, **kw: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, **kw),
    "rmsprop": lambda p, **kw: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5, **kw),
}
IMPLEMENTATIONS = {
    "default": {},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


def _supported(name: str, variant: str) -> bool:
    """Whether torch offers this implementation of the optimizer on the CPU."""
    try:
        OPTIMIZERS[name]([nn.Parameter(torch.zeros(1))], **IMPLEMENTATIONS[variant])
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


VARIANTS = [
    pytest.param(name, variant, id=f"{name}-{variant}")
    for name in OPTIMIZERS
    for variant in IMPLEMENTATIONS
    if _supported(name, variant)
]


def _zero_noise_models(
    name: str,
    variant: str,
    wrap: Callable[[torch.optim.Optimizer], torch.optim.Optimizer],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    results = []
    for wrapped in (False, True):
        model = _small_model()
        opt = OPTIMIZERS[name](model.parameters(), **IMPLEMENTATIONS[variant])
        _train(model, wrap(opt) if wrapped else opt, steps=4)
        results.append(_params(model))
    return results[0], results[1]


@pytest.mark.parametrize(("name", "variant"), VARIANTS)
def test_zero_sigma_is_bit_identical_to_the_base_optimizer(
    name: str, variant: str
) -> None:
    bare, wrapped = _zero_noise_models(
        name, variant, lambda opt: PerturbedOptimizer(opt, sigma=0.0)
    )
    assert _same(bare, wrapped)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_no_noise_kind_is_bit_identical_to_the_base_optimizer(name: str) -> None:
    bare, wrapped = _zero_noise_models(
        name, "default", lambda opt: PerturbedOptimizer(opt, noise=None, sigma=1.0)
    )
    assert _same(bare, wrapped)


def test_closure_is_evaluated_and_its_loss_returned() -> None:
    models = [_small_model(), _small_model()]
    x, y = _batch(0)
    losses = []
    for model, wrapped in zip(models, (False, True)):
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        if wrapped:
            opt = PerturbedOptimizer(opt, sigma=0.0)

        def closure(
            model: nn.Module = model, opt: torch.optim.Optimizer = opt
        ) -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        losses.append(opt.step(closure))
    assert torch.equal(losses[0], losses[1])
    assert _same(_params(models[0]), _params(models[1]))


# -- noise kinds ---------------------------------------------------------------


def _draw(
    noise: str | NoiseKind,
    sigma: float = 0.1,
    shape: tuple[int, ...] = (1000, 1000),
    grad: torch.Tensor | None = None,
    **options: object,
) -> tuple[torch.Tensor, torch.Tensor, PerturbedOptimizer]:
    """(δ, g, optimizer) for one parameter, read off the gradient after perturbing."""
    torch.manual_seed(0)
    param = nn.Parameter(torch.randn(shape))
    g = torch.zeros(shape) if grad is None else grad
    param.grad = g.clone()
    opt = PerturbedOptimizer(torch.optim.SGD([param], lr=1.0), noise, sigma, **options)
    assert opt.perturb_grads()
    return param.grad - g, g, opt


@pytest.mark.parametrize(
    ("kind", "reference"),
    [
        ("gaussian", torch.distributions.Normal(0.0, 0.1)),
        (
            "uniform",
            torch.distributions.Uniform(-0.1 * math.sqrt(3), 0.1 * math.sqrt(3)),
        ),
        ("laplace", torch.distributions.Laplace(0.0, 0.1 / math.sqrt(2))),
    ],
)
def test_additive_noise_has_mean_zero_and_std_sigma(
    kind: str, reference: torch.distributions.Distribution
) -> None:
    delta, _, _ = _draw(kind, sigma=0.1)
    samples = reference.sample((delta.numel(),))
    assert abs(delta.mean().item()) < 5 * 0.1 / 1000
    assert delta.std().item() == pytest.approx(reference.stddev.item(), rel=0.01)
    assert delta.var().item() == pytest.approx(reference.variance.item(), rel=0.02)
    # the shape of the distribution, not just its variance: E|δ| and the 4th moment
    assert delta.abs().mean().item() == pytest.approx(
        samples.abs().mean().item(), rel=0.01
    )
    kurtosis = (delta**4).mean() / delta.var() ** 2
    assert kurtosis.item() == pytest.approx(
        ((samples**4).mean() / samples.var() ** 2).item(), rel=0.03
    )


def test_uniform_noise_stays_inside_its_bounds() -> None:
    delta, _, _ = _draw("uniform", sigma=0.1)
    assert delta.abs().max().item() <= 0.1 * math.sqrt(3) + 1e-6


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropnoise_drops_a_fraction_p_and_rescales_the_rest(p: float) -> None:
    grad = torch.ones(1000, 1000)
    delta, g, _ = _draw(make_noise("dropnoise", p=p), sigma=1.0, grad=grad)
    perturbed = g + delta
    dropped = (perturbed == 0).float().mean().item()
    assert dropped == pytest.approx(p, abs=0.005)
    kept = perturbed[perturbed != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - p)))


def test_gradient_scaled_noise_is_the_gradient_times_gaussian() -> None:
    grad = torch.rand(1000, 1000) + 0.5
    delta, g, _ = _draw("gradient_scaled", sigma=0.2, grad=grad)
    assert (delta / g).std().item() == pytest.approx(0.2, rel=0.01)


def test_orthogonal_noise_has_no_component_along_each_gradient() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(300, 200), nn.Linear(200, 100))
    grads = [torch.randn_like(p) for p in model.parameters()]
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    opt = PerturbedOptimizer(
        torch.optim.SGD(model.parameters(), lr=1.0), "orthogonal", 0.5
    )
    opt.perturb_grads()
    for p, g in zip(model.parameters(), grads):
        delta = (p.grad - g).double()
        cosine = torch.dot(delta.flatten(), g.double().flatten()) / (
            delta.norm() * g.norm()
        )
        assert abs(cosine.item()) < 1e-4
    big = model[0].weight.grad - grads[0]
    assert big.std().item() == pytest.approx(0.5, rel=0.02)


@pytest.mark.parametrize(
    ("penalty", "derivative"), [("l2", lambda t: t), ("l1", torch.sign)]
)
def test_regularization_noise_is_lambda_times_the_penalty_gradient(
    penalty: str, derivative: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    delta, _, opt = _draw(
        make_noise("regularization", penalty=penalty), sigma=0.3, shape=(50, 40)
    )
    (param,) = opt.param_groups[0]["params"]
    torch.testing.assert_close(delta, 0.3 * derivative(param.detach()))


def test_new_noise_kinds_register_by_name() -> None:
    @register_noise("test_ones")
    class Ones(NoiseKind):
        def __call__(self, batch: NoiseBatch) -> None:
            batch.flat.fill_(1.0)

    try:
        delta, _, _ = _draw("test_ones", sigma=0.25, shape=(3, 4))
        assert torch.equal(delta, torch.full((3, 4), 0.25))
    finally:
        del NOISE_KINDS["test_ones"]


# -- scales, clipping, bounds ----------------------------------------------------


def test_group_noise_scale_multiplies_sigma() -> None:
    a, b = nn.Parameter(torch.zeros(500, 500)), nn.Parameter(torch.zeros(500, 500))
    base = torch.optim.SGD(
        [{"params": [a]}, {"params": [b], "noise_scale": 3.0}], lr=1.0
    )
    a.grad, b.grad = torch.zeros_like(a), torch.zeros_like(b)
    PerturbedOptimizer(base, sigma=0.1).perturb_grads()
    assert a.grad.std().item() == pytest.approx(0.1, rel=0.02)
    assert b.grad.std().item() == pytest.approx(0.3, rel=0.02)


def _unit_scaled_grads(scaled: bool) -> list[torch.Tensor]:
    torch.manual_seed(0)
    conv, linear = nn.Conv2d(8, 6, 5), nn.Linear(400, 4)
    params = [conv.weight, conv.bias, linear.weight, linear.bias]
    for p in params:
        p.grad = torch.zeros_like(p)
    named = [("conv.weight", conv.weight), ("linear.bias", linear.bias)]
    opt = PerturbedOptimizer(
        torch.optim.SGD(params, lr=1.0), sigma=0.1, param_names=named
    )
    if scaled:
        opt.set_unit_scale("conv.weight", torch.tensor(CONV_SCALE))
        opt.set_unit_scale(linear.weight, LINEAR_SCALE)
        opt.set_unit_scale("linear.bias", 0.0)
    opt.perturb_grads()
    return [p.grad for p in params]


CONV_SCALE = [0.0, 1.0, 2.0, 0.0, 1.0, 0.5]
LINEAR_SCALE = [0.0, 1.0, 2.0, 4.0]


def test_unit_scales_multiply_their_rows_and_zero_means_no_noise() -> None:
    conv_w, conv_b, linear_w, linear_b = _unit_scaled_grads(scaled=True)
    ref_conv_w, ref_conv_b, ref_linear_w, _ = _unit_scaled_grads(scaled=False)
    conv_scale = torch.tensor(CONV_SCALE).view(-1, 1, 1, 1)
    torch.testing.assert_close(conv_w, conv_scale * ref_conv_w)
    torch.testing.assert_close(
        linear_w, torch.tensor(LINEAR_SCALE)[:, None] * ref_linear_w
    )
    for row in (0, 3):
        assert torch.equal(conv_w[row], torch.zeros_like(conv_w[row]))  # exactly
    assert torch.equal(linear_w[0], torch.zeros(400))
    assert torch.equal(linear_b, torch.zeros(4))
    assert torch.equal(conv_b, ref_conv_b)  # unscaled parameters: untouched noise
    assert ref_linear_w.std().item() == pytest.approx(0.1, rel=0.1)


def test_unit_scale_of_the_wrong_shape_names_the_parameter() -> None:
    linear = nn.Linear(10, 4)
    opt = PerturbedOptimizer(
        torch.optim.SGD(linear.parameters(), lr=0.1),
        param_names=linear.named_parameters(),
    )
    with pytest.raises(ValueError, match=r"weight of shape \(4, 10\).*\(10,\).*\(4,\)"):
        opt.set_unit_scale(linear.weight, torch.ones(10))
    with pytest.raises(ValueError, match=r"param_groups|bias"):
        opt.set_unit_scale(linear.bias, -1.0)
    with pytest.raises(ValueError, match="no parameter named 'nope'"):
        opt.set_unit_scale("nope", 1.0)


def _random_grads(model: nn.Module, scale: float = 10.0) -> None:
    torch.manual_seed(3)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * scale


def test_clipping_equals_torch_clip_grad_norm() -> None:
    reference, model = _small_model(), _small_model()
    _random_grads(reference)
    _random_grads(model)
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
    opt = PerturbedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), noise=None, clip_norm=0.5
    )
    opt.perturb_grads()
    for a, b in zip(reference.parameters(), model.parameters()):
        assert torch.equal(a.grad, b.grad)


def test_per_group_clipping_equals_torch_clip_grad_norm_per_group() -> None:
    reference, model = _small_model(), _small_model()
    _random_grads(reference)
    _random_grads(model)
    for layer in (reference[0], reference[3]):
        torch.nn.utils.clip_grad_norm_(layer.parameters(), 0.5)
    groups = [{"params": model[0].parameters()}, {"params": model[3].parameters()}]
    opt = PerturbedOptimizer(
        torch.optim.SGD(groups, lr=0.1), noise=None, clip_norm=0.5, clip_per_group=True
    )
    opt.perturb_grads()
    for a, b in zip(reference.parameters(), model.parameters()):
        assert torch.equal(a.grad, b.grad)


def test_noise_is_bounded_relative_to_each_gradient() -> None:
    model = _small_model()
    _random_grads(model, scale=0.01)
    before = [p.grad.clone() for p in model.parameters()]
    opt = PerturbedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), sigma=1.0, max_noise_ratio=0.5
    )
    opt.perturb_grads()
    for p, g in zip(model.parameters(), before):
        assert (p.grad - g).norm().item() <= 0.5 * g.norm().item() * (1 + 1e-5)
        assert (p.grad - g).norm().item() >= 0.49 * g.norm().item()  # σ=1 saturates it


# -- stability ---------------------------------------------------------------------


def test_non_finite_gradient_skips_the_step() -> None:
    model = _small_model()
    before = _params(model)
    opt = PerturbedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), sigma=0.1)
    _random_grads(model)
    model[0].weight.grad[0, 0, 0, 0] = float("nan")
    opt.step()
    assert opt.skipped_steps == 1
    assert _same(before, _params(model))
    _random_grads(model)
    opt.step()
    assert opt.skipped_steps == 1
    assert not _same(before, _params(model))


def test_divergence_signal() -> None:
    """(tests/test_perturb_divergence.py: the lazy rule against an eager reference)"""
    opt = PerturbedOptimizer(torch.optim.SGD(_small_model().parameters(), lr=0.1))
    for loss in (2.0, torch.tensor(1.0, requires_grad=True), 9.0):
        assert opt.observe_loss(loss) is None  # returns nothing: reading would sync
    assert not opt.diverged
    opt.observe_loss(11.0)
    assert opt.diverged and "best" in (opt.divergence_reason or "")
    fresh = PerturbedOptimizer(torch.optim.SGD(_small_model().parameters(), lr=0.1))
    fresh.observe_loss(float("nan"))
    assert fresh.diverged


def test_exploding_gradient_norm_sets_diverged() -> None:
    model = _small_model()
    opt = PerturbedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0),
        sigma=0.0,
        grad_explosion_factor=100.0,
    )
    for _ in range(12):
        _random_grads(model, scale=1.0)
        opt.step()
    assert not opt.diverged
    _random_grads(model, scale=1e4)
    opt.step()
    assert opt.diverged
    assert "gradient norm" in (opt.divergence_reason or "")


# -- schedules ---------------------------------------------------------------------


STEPS = [0, 1, 2, 7, 10, 99, 250]


@pytest.mark.parametrize(
    ("schedule", "formula"),
    [
        (make_schedule("constant"), lambda t: 1.0),
        (ExponentialSchedule(gamma=0.9), lambda t: 0.9**t),
        (StepSchedule(step_size=10, gamma=0.5), lambda t: 0.5 ** (t // 10)),
        (
            CosineSchedule(total_steps=100, min_factor=0.1),
            lambda t: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 100) / 100)),
        ),
        (WarmupSchedule(warmup_steps=10), lambda t: min(1.0, (t + 1) / 10)),
        (
            WarmupSchedule(warmup_steps=5, then=ExponentialSchedule(0.99)),
            lambda t: min(1.0, (t + 1) / 5) * 0.99**t,
        ),
        (AnnealedSchedule(gamma=0.55), lambda t: (1 + t) ** -0.275),
    ],
    ids=[
        "constant",
        "exponential",
        "step",
        "cosine",
        "warmup",
        "warmup_exponential",
        "annealed",
    ],
)
def test_schedule_matches_its_closed_form(
    schedule: Callable[[int], float], formula: Callable[[int], float]
) -> None:
    for t in STEPS:
        assert schedule(t) == pytest.approx(formula(t), rel=1e-12)


@pytest.mark.parametrize("eta", [0.01, 0.3, 1.0])
def test_annealed_schedule_gives_neelakantans_variance(eta: float) -> None:
    model = _small_model()
    opt = PerturbedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.01),
        sigma=math.sqrt(eta),
        schedule="annealed",
    )
    for t in range(6):
        assert opt.current_sigma() ** 2 == pytest.approx(
            eta / (1 + t) ** 0.55, rel=1e-12
        )
        _random_grads(model, scale=0.1)
        opt.step()


def test_adaptive_schedule_follows_the_gradient_norm() -> None:
    schedule = AdaptiveSchedule(beta=0.5, min_factor=0.05)
    average = None
    peak = 0.0
    for norm in [4.0, 8.0, 2.0, 1.0, 0.5, 0.0, 0.0]:
        schedule.observe(norm)
        average = norm if average is None else 0.5 * average + 0.5 * norm
        peak = max(peak, average)
        assert schedule(0) == pytest.approx(max(0.05, average / peak))
    assert schedule(0) < 0.2  # the noise shrank as the gradient did


def test_adaptive_schedule_reads_the_optimizers_gradient_norm() -> None:
    model = _small_model()
    opt = PerturbedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0), schedule=AdaptiveSchedule(beta=0.5)
    )
    reference = AdaptiveSchedule(beta=0.5)
    for scale in (1.0, 2.0, 0.1, 0.01):
        _random_grads(model, scale=scale)
        grads = [p.grad for p in model.parameters()]
        reference.observe(torch.nn.utils.get_total_norm(grads).item())
        opt.step()
        assert opt.current_sigma() == pytest.approx(opt.sigma * reference(0), rel=1e-6)
    assert opt.current_sigma() < 0.3 * opt.sigma


def test_unknown_names_list_the_valid_ones() -> None:
    params = _small_model().parameters()
    with pytest.raises(
        ValueError, match="unknown noise kind 'gauss'.*gaussian.*orthogonal"
    ):
        PerturbedOptimizer(torch.optim.SGD(params, lr=0.1), noise="gauss")
    with pytest.raises(ValueError, match="unknown schedule 'cos'.*annealed.*cosine"):
        make_schedule("cos")


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: PerturbedOptimizer(torch.optim.SGD(p, lr=0.1), sigma=-0.1), "sigma"),
        (
            lambda p: PerturbedOptimizer(torch.optim.SGD(p, lr=0.1), clip_norm=0.0),
            "clip_norm",
        ),
        (
            lambda p: PerturbedOptimizer(
                torch.optim.SGD(p, lr=0.1), max_noise_ratio=-1.0
            ),
            "max_noise_ratio",
        ),
        (
            lambda p: PerturbedOptimizer(
                torch.optim.SGD(p, lr=0.1), grad_explosion_factor=0.0
            ),
            "grad_explosion_factor",
        ),
        (lambda p: make_noise("dropnoise", p=1.0), "dropnoise p"),
        (lambda p: make_noise("dropnoise", p=-0.1), "dropnoise p"),
        (lambda p: make_noise("regularization", penalty="l3"), "penalty"),
        (lambda p: make_schedule("cosine", total_steps=0), "total_steps"),
    ],
)
def test_bad_values_raise_value_error_naming_the_parameter(
    make: Callable[[Iterator[nn.Parameter]], object], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        make(_small_model().parameters())


def test_negative_group_noise_scale_is_rejected() -> None:
    model = _small_model()
    opt = PerturbedOptimizer(
        torch.optim.SGD([{"params": model.parameters(), "noise_scale": -1}], lr=0.1)
    )
    _random_grads(model)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['noise_scale'\]"):
        opt.step()


# -- reproducibility ---------------------------------------------------------------


def _noisy_run(seed: int, steps: int = 4) -> list[torch.Tensor]:
    model = _small_model()
    opt = PerturbedOptimizer(
        torch.optim.Adam(model.parameters(), lr=1e-2), sigma=0.05, seed=seed
    )
    _train(model, opt, steps)
    return _params(model)


def test_same_seed_same_trajectory_other_seed_other_trajectory() -> None:
    assert _same(_noisy_run(seed=1), _noisy_run(seed=1))
    assert not _same(_noisy_run(seed=1), _noisy_run(seed=2))
    # and the noise matters: a noisy run differs from a noiseless one
    model = _small_model()
    _train(model, torch.optim.Adam(model.parameters(), lr=1e-2), 4)
    assert not _same(_params(model), _noisy_run(seed=1))


def test_state_dict_round_trip_continues_bit_exactly() -> None:
    def make(model: nn.Module) -> PerturbedOptimizer:
        opt = PerturbedOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
            sigma=0.05,
            schedule=WarmupSchedule(3, then=AdaptiveSchedule()),
            seed=7,
            clip_norm=1.0,
        )
        opt.set_unit_scale(model[3].weight, torch.tensor([0.5, 1.0, 2.0]))
        return opt

    model = _small_model()
    opt = make(model)
    _train(model, opt, steps=3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    _train(model, opt, steps=3, start=3)

    buffer.seek(0)
    saved = torch.load(buffer)  # weights_only: plain containers and tensors
    resumed = _small_model(seed=99)
    resumed.load_state_dict(saved["model"])
    resumed_opt = make(resumed)
    resumed_opt.set_unit_scale(resumed[3].weight, None)  # restored from the state
    resumed_opt.load_state_dict(saved["opt"])
    _train(resumed, resumed_opt, steps=3, start=3)
    assert _same(_params(model), _params(resumed))


def test_works_with_lr_schedulers() -> None:
    model = _small_model()
    opt = PerturbedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), sigma=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _train(model, opt, steps=1)
    scheduler.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    assert opt.base.param_groups[0]["lr"] == pytest.approx(0.05)


# -- mixed precision ---------------------------------------------------------------


@pytest.mark.parametrize("explicit_unscale", [False, True])
def test_grad_scaler_noise_lands_on_unscaled_gradients(explicit_unscale: bool) -> None:
    plain, scaled = _small_model(), _small_model()
    plain_opt = PerturbedOptimizer(
        torch.optim.SGD(plain.parameters(), lr=0.1), sigma=0.05, clip_norm=1.0
    )
    scaled_opt = PerturbedOptimizer(
        torch.optim.SGD(scaled.parameters(), lr=0.1), sigma=0.05, clip_norm=1.0
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    for step in range(3):
        x, y = _batch(step)
        for model, opt in ((plain, plain_opt), (scaled, scaled_opt)):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            if opt is plain_opt:
                loss.backward()
                opt.step()
                continue
            scaler.scale(loss).backward()
            if explicit_unscale:
                scaler.unscale_(opt)
            scaler.step(opt)
            scaler.update()
    # scaling by a power of two and unscaling is exact, so the noise must have
    # met exactly the same (unscaled) gradients in both runs
    assert _same(_params(plain), _params(scaled))
    assert scaled_opt._step == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_identity_reproducibility_and_resume() -> None:
    def make(sigma: float) -> tuple[nn.Module, torch.optim.Optimizer]:
        model = _small_model().cuda()
        base = torch.optim.Adam(model.parameters(), lr=1e-2)
        return model, (PerturbedOptimizer(base, sigma=sigma) if sigma >= 0 else base)

    def train(
        model: nn.Module, opt: torch.optim.Optimizer, start: int, stop: int
    ) -> None:
        for step in range(start, stop):
            x, y = (t.cuda() for t in _batch(step))
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

    runs = {}
    for name, sigma in [
        ("plain", -1.0),
        ("zero", 0.0),
        ("noisy", 0.05),
        ("again", 0.05),
    ]:
        model, opt = make(sigma)
        train(model, opt, 0, 3)
        runs[name] = (model, opt)
    params = {name: _params(model) for name, (model, _) in runs.items()}
    assert _same(params["plain"], params["zero"])
    assert _same(params["noisy"], params["again"])
    assert not _same(params["noisy"], params["plain"])

    model, opt = runs["noisy"]
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
    train(model, opt, 3, 6)
    resumed, resumed_opt = make(0.05)
    resumed.load_state_dict(saved["model"])
    resumed_opt.load_state_dict(saved["opt"])
    train(resumed, resumed_opt, 3, 6)
    assert _same(_params(model), _params(resumed))


# -- noise drawn ahead on the side thread ----------------------------------------------

PREFETCH_KINDS = ["gaussian", "uniform", "laplace", "dropnoise", "gradient_scaled", "orthogonal"]  # fmt: skip


@pytest.fixture(autouse=True)
def _small_rings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rings of a few steps (the small model has 475 parameters): many refills per run."""
    monkeypatch.setattr(buffers, "PREFETCH_ELEMENTS", 2048)


def _grouped(model: nn.Module, prefetch: bool, noise: str) -> PerturbedOptimizer:
    groups = [
        {"params": list(model[0].parameters()), "noise_scale": 2.0},
        {"params": list(model[3].parameters())},
    ]
    return PerturbedOptimizer(
        torch.optim.Adam(groups, lr=1e-2), noise=noise, sigma=0.05, seed=3,
        prefetch=prefetch,
    )  # fmt: skip


@pytest.mark.parametrize("noise", PREFETCH_KINDS)
def test_prefetch_draws_exactly_what_drawing_in_line_draws(noise: str) -> None:
    """Over many rings' worth of steps (5 steps per half here)."""
    trajectories = []
    for prefetch in (False, True):
        model = _small_model()
        opt = _grouped(model, prefetch, noise)
        _train(model, opt, steps=150)
        assert (opt._ahead.current is not None) == prefetch  # noqa: SLF001
        trajectories.append(_params(model))
    assert _same(*trajectories)


def test_prefetch_follows_changes_in_which_buckets_get_noise() -> None:
    """A group silenced, a unit scale set, a gradient missing, a skipped step:
    noise drawn ahead for other buckets is rewound and drawn again, in order."""
    trajectories = []
    for prefetch in (False, True):
        model = _small_model()
        opt = _grouped(model, prefetch, "gaussian")
        _train(model, opt, steps=5)
        opt.param_groups[0]["noise_scale"] = 0.0
        _train(model, opt, steps=3, start=5)
        opt.param_groups[0]["noise_scale"] = 1.0
        opt.set_unit_scale(model[3].weight, torch.tensor([0.0, 1.0, 3.0]))
        _train(model, opt, steps=3, start=8)
        model[0].weight.requires_grad_(False)
        _train(model, opt, steps=3, start=11)
        model[0].weight.requires_grad_(True)
        _random_grads(model)
        model[3].bias.grad[0] = float("inf")
        opt.step()
        _train(model, opt, steps=70, start=14)
        assert opt.skipped_steps == 1
        assert (opt._ahead.current is not None) == prefetch  # noqa: SLF001
        trajectories.append(_params(model))
    assert _same(*trajectories)


@pytest.mark.parametrize(("saving", "resuming"), [(True, False), (False, True), (True, True)])  # fmt: skip
def test_state_dict_with_noise_drawn_ahead_resumes_exactly(
    saving: bool, resuming: bool
) -> None:
    model = _small_model()
    opt = _grouped(model, saving, "laplace")
    _train(model, opt, steps=10)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    _train(model, opt, steps=80, start=10)

    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = _small_model(seed=99)
    resumed.load_state_dict(saved["model"])
    resumed_opt = _grouped(resumed, resuming, "laplace")
    resumed_opt.load_state_dict(saved["opt"])
    _train(resumed, resumed_opt, steps=80, start=10)
    assert _same(_params(model), _params(resumed))


def test_prefetch_defaults_to_on_only_with_a_free_core() -> None:
    model = _small_model()
    opt = PerturbedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    _train(model, opt, steps=2)
    free = torch.get_num_threads() < len(os.sched_getaffinity(0))
    assert (opt._ahead.current is not None) == free  # noqa: SLF001
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    _train(model, opt, steps=2, start=2)
    assert opt._ahead.current is None  # noqa: SLF001


def test_sparse_gradients_step_exactly_without_noise_and_are_refused_with_it() -> None:
    def run(wrap: bool, sigma: float = 0.0) -> torch.Tensor:
        torch.manual_seed(0)
        embedding = nn.Embedding(10, 4, sparse=True)
        opt: torch.optim.Optimizer = torch.optim.SGD(embedding.parameters(), lr=0.1)
        if wrap:
            opt = PerturbedOptimizer(opt, sigma=sigma, param_names=embedding.named_parameters())  # fmt: skip
        for step in range(3):
            opt.zero_grad()
            embedding(torch.tensor([step, 7])).pow(2).sum().backward()
            opt.step()
        return embedding.weight.detach()

    assert torch.equal(run(wrap=False), run(wrap=True))
    with pytest.raises(ValueError, match="weight .*sparse gradient.*noise_scale 0"):
        run(wrap=True, sigma=0.1)
