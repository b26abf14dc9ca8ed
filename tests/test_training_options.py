"""Training options inside the generated scripts, through their real command-line
flags, checked against torch and by hand."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys

import pytest
import torch

from ablagen.generate.context import TrainConfig
from conftest import EXAMPLES, MODELS
from scriptutil import generate, load_script, new_model

S = torch.optim.lr_scheduler


@pytest.fixture(scope="module")
def make(tmp_path_factory):
    """A loaded baseline script of the MLP on synthetic data, per training config."""
    cache = {}

    def build(**train):
        key = tuple(sorted(train.items()))
        if key not in cache:
            out = tmp_path_factory.mktemp("opts") / "s"
            config = TrainConfig(**{"epochs": 1, **train})
            generate(MODELS / "mlp.py", out, dataset="synthetic", train=config)
            cache[key] = out / "baseline.py"
        return load_script(cache[key])

    return build


def run(module, *flags, seed=0):
    """``train()`` with the script's own flags parsed, model init seeded as main() does."""
    torch.manual_seed(seed)
    return module.train(module.parse_args([str(flag) for flag in flags]))


def torch_lrs(make_scheduler, epochs, steps_per_epoch=1, per_batch=False):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=0.1)
    sched = make_scheduler(opt)
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        for _ in range(steps_per_epoch):
            opt.step()
            if per_batch:
                sched.step()
        if not per_batch:
            sched.step()
    return lrs


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("none", lambda o: S.LambdaLR(o, lambda e: 1.0)),
        ("step", lambda o: S.StepLR(o, step_size=2, gamma=0.5)),
        ("exponential", lambda o: S.ExponentialLR(o, gamma=0.5)),
        ("cosine", lambda o: S.CosineAnnealingLR(o, T_max=6)),  # T_max: --epochs
        ("warmup", lambda o: S.LinearLR(o, start_factor=1 / 3, total_iters=2)),
    ],
)
def test_epoch_schedulers_follow_the_flags_like_torch(make, name, reference):
    module = make(scheduler=name, step_size=2, gamma=0.5, warmup_epochs=2, lr=0.5)
    result = run(module, "--epochs", 6, "--lr", 0.1)
    got = [h["lr"] for h in result["history"]]
    assert got == pytest.approx(torch_lrs(reference, 6), rel=1e-12)


def test_cyclic_scheduler_takes_its_bounds_from_the_lr_flag(make):
    module = make(scheduler="cyclic", lr=0.5)
    result = run(module, "--epochs", 5, "--lr", 0.1, "--batch-size", 100)
    steps = -(-len(module.load_data()[0]) // 100)
    reference = torch_lrs(
        lambda o: S.CyclicLR(
            o, base_lr=0.01, max_lr=0.1, step_size_up=2 * steps, cycle_momentum=False
        ),
        5,
        steps_per_epoch=steps,
        per_batch=True,
    )
    assert [h["lr"] for h in result["history"]] == pytest.approx(reference, rel=1e-12)


def test_cosine_horizon_is_the_epochs_flag_in_a_real_run(make):
    """``python baseline.py --epochs 3``: the cosine schedule spans 3 epochs, not 1."""
    module = make(scheduler="cosine", lr=0.1)
    out = module.__file__ + ".json"
    subprocess.run(
        [sys.executable, module.__file__, "--epochs", "3", "--out", out], check=True
    )
    got = [h["lr"] for h in json.loads(open(out).read())["history"]]
    assert got == pytest.approx(
        [0.1 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)], rel=1e-12
    )


def scripted(module, losses, accs):
    """Replace evaluate() with a scripted validation curve."""
    curve = iter(zip(losses, accs))
    module.evaluate = lambda *a, **k: next(curve)


def test_early_stopping_stops_at_the_right_epoch(make):
    module = make(patience=2)
    scripted(module, [1.0, 0.8, 0.9, 0.85, 0.7, 0.6], itertools.repeat(0.1))
    assert run(module, "--epochs", 6)["epochs_run"] == 4  # 3 and 4 do not beat 0.8


def test_no_early_stopping_without_patience(make):
    module = make()
    assert module.PATIENCE is None
    scripted(module, [1.0, 1.1, 1.2, 1.3], itertools.repeat(0.1))
    assert run(module, "--epochs", 4)["epochs_run"] == 4


def test_epochs_to_target_and_stop_at_target(make):
    curve = [0.5, 0.7, 0.92, 0.95]
    module = make(target_acc=0.9)
    scripted(module, itertools.repeat(0.5), curve)
    result = run(module, "--epochs", 4)
    assert result["epochs_to_target"] == 3 and result["epochs_run"] == 4
    module = make(target_acc=0.9, stop_at_target=True)
    scripted(module, itertools.repeat(0.5), curve)
    result = run(module, "--epochs", 4)
    assert result["epochs_to_target"] == 3 and result["epochs_run"] == 3
    module = make(target_acc=0.99)
    scripted(module, itertools.repeat(0.5), curve)
    assert run(module, "--epochs", 4)["epochs_to_target"] is None


def test_divergence_is_an_exploding_or_non_finite_loss(make):
    module = make()
    scripted(module, [1.0, 1.0, math.nan], itertools.repeat(0.1))
    result = run(module, "--epochs", 3)
    assert result["status"] == "diverged" and result["epochs_run"] == 3


def test_l1_penalty_by_hand(make):
    module = make(l1=0.01)
    model = new_model(module)
    by_hand = 0.01 * sum(p.abs().sum().item() for p in model.parameters())
    assert module.l1_penalty(model).item() == pytest.approx(by_hand, rel=1e-6)
    assert not hasattr(make(), "l1_penalty")  # no L1: no code for it


def test_weight_decay_is_l2_in_the_update(make):
    module = make(optimizer="sgd", weight_decay=0.1)
    model = new_model(module)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = module.make_optimizer(model, 0.5)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    for old, new in zip(before, model.parameters()):
        assert torch.allclose(new, old - 0.5 * (1 + 0.1 * old))


def test_gradient_clipping_bounds_the_update(make, tmp_path):
    """One full-batch SGD step at lr 1 moves the weights by exactly GRAD_CLIP."""
    module = make(optimizer="sgd", grad_clip=0.01)
    torch.manual_seed(0)
    before = torch.cat([p.detach().flatten() for p in new_model(module).parameters()])
    checkpoint = tmp_path / "w.pt"
    run(
        module,
        "--epochs",
        1,
        "--lr",
        1.0,
        "--batch-size",
        100000,
        "--checkpoint",
        checkpoint,
    )
    after = torch.cat([t.flatten() for t in torch.load(checkpoint).values()])
    assert (before - after).norm().item() == pytest.approx(0.01, rel=1e-4)


def test_the_seed_flag_reaches_the_noise_generator(make):
    module = make(sigma=0.05)
    seeds = []
    plain = module.GradientNoise

    class Recording(plain):
        def __init__(self, optimizer, sigma, seed, device):
            seeds.append((sigma, seed))
            super().__init__(optimizer, sigma, seed, device)

    module.GradientNoise = Recording
    run(module, "--epochs", 1, "--seed", 5, "--sigma", 0.2)
    assert seeds == [(0.2, 5)]


def test_noise_runs_repeat_and_zero_sigma_is_the_plain_script(make):
    noisy, plain = make(sigma=0.05), make()
    first, again = run(noisy, "--epochs", 2), run(noisy, "--epochs", 2)
    assert first["history"] == again["history"]
    silent = run(noisy, "--epochs", 2, "--sigma", 0)
    assert silent["history"] == run(plain, "--epochs", 2)["history"]
    assert silent["history"] != first["history"]


def test_plain_scripts_carry_no_noise_code(make):
    module = make()
    assert not hasattr(module, "GradientNoise") and not hasattr(module, "SIGMA")
    assert "--sigma" not in module.parse_args.__code__.co_consts


def test_result_metrics_present(make):
    module = make()
    result = run(module, "--epochs", 2)
    for key in (
        "params_total",
        "params_effective",
        "model_bytes",
        "peak_memory_bytes",
        "samples_per_s",
        "epochs_to_target",
    ):
        assert key in result
    model = new_model(module)
    assert result["params_total"] == sum(p.numel() for p in model.parameters())
    assert result["model_bytes"] == sum(
        t.numel() * t.element_size() for t in model.state_dict().values()
    )
    assert result["samples_per_s"] > 0
    assert result["peak_memory_bytes"] is None  # on CPU: ablagen run measures it


def test_dropout_override_reaches_the_model(tmp_path):
    study = generate(
        EXAMPLES / "digits_cnn.py", tmp_path / "d", components=("conv1",), dropout=0.3
    )
    module = load_script(study / "baseline.py")
    assert module.DROPOUT == 0.3 and new_model(module).drop.p == 0.3


def test_dropout_needs_a_dropout_constant(tmp_path):
    from ablagen.core.errors import ConfigError

    with pytest.raises(ConfigError, match="exposes no DROPOUT"):
        generate(MODELS / "mlp.py", tmp_path / "m", dropout=0.2, dataset="synthetic")


def test_split_is_fixed_by_the_split_seed(tmp_path):
    a = generate(EXAMPLES / "tabular_mlp.py", tmp_path / "a", components=("fc1",))
    b = generate(
        EXAMPLES / "tabular_mlp.py", tmp_path / "b", components=("fc1",), split_seed=1
    )
    data_a = load_script(a / "fc1__zero.py").load_data()
    assert all(
        torch.equal(x, y)
        for x, y in zip(data_a, load_script(a / "baseline.py").load_data())
    )
    data_b = load_script(b / "baseline.py").load_data()
    assert not torch.equal(data_a[1], data_b[1])


def test_deterministic_algorithms_would_change_nothing(make):
    """The scripts no longer switch torch.use_deterministic_algorithms on (seconds of
    start-up): on CPU the metrics are the same bit for bit with it on."""
    module = make(sigma=0.01, l1=1e-4, grad_clip=1.0)
    plain = run(module, "--epochs", 2)
    torch.use_deterministic_algorithms(True)
    try:
        strict = run(module, "--epochs", 2)
    finally:
        torch.use_deterministic_algorithms(False)
    assert strict["history"] == plain["history"]
