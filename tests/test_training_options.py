"""Training options inside the generated scripts, checked against torch and by hand."""

from __future__ import annotations

import argparse
import itertools

import pytest
import torch

from conftest import EXAMPLES, MODELS
from scriptutil import generate, load_script


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    study = generate(
        MODELS / "mlp.py",
        tmp_path_factory.mktemp("opts") / "s",
        components=("0",),
        dataset="synthetic",
    )
    return study / "baseline.py"


def fresh(script, **config):
    module = load_script(script)
    for key, value in config.items():
        setattr(module, key, value)
    return module


def args(module, epochs):
    return argparse.Namespace(
        epochs=epochs,
        seed=0,
        device="cpu",
        out=None,
        batch_size=module.BATCH_SIZE,
        lr=module.LR,
        checkpoint=None,
    )


def torch_lrs(make, epochs, steps_per_epoch=1, per_batch=False):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=0.1)
    sched = make(opt)
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


S = torch.optim.lr_scheduler


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("none", lambda o: S.LambdaLR(o, lambda e: 1.0)),
        ("step", lambda o: S.StepLR(o, step_size=2, gamma=0.5)),
        ("exponential", lambda o: S.ExponentialLR(o, gamma=0.5)),
        ("cosine", lambda o: S.CosineAnnealingLR(o, T_max=6)),
        ("warmup", lambda o: S.LinearLR(o, start_factor=1 / 3, total_iters=2)),
    ],
)
def test_epoch_schedulers_match_torch(script, name, reference):
    module = fresh(
        script,
        SCHEDULER=name,
        LR=0.1,
        EPOCHS=6,
        STEP_SIZE=2,
        GAMMA=0.5,
        WARMUP_EPOCHS=2,
    )
    result = module.train(args(module, 6))
    got = [h["lr"] for h in result["history"]]
    assert got == pytest.approx(torch_lrs(reference, 6), rel=1e-12)


def test_cyclic_scheduler_steps_per_batch_like_torch(script):
    module = fresh(script, SCHEDULER="cyclic", LR=0.1, BATCH_SIZE=100)
    result = module.train(args(module, 5))
    steps = -(-len(module.load_data()[0]) // 100)
    reference = torch_lrs(
        lambda o: S.CyclicLR(
            o,
            base_lr=0.01,
            max_lr=0.1,
            step_size_up=2 * steps,
            mode="triangular",
            cycle_momentum=False,
        ),
        5,
        steps_per_epoch=steps,
        per_batch=True,
    )
    assert [h["lr"] for h in result["history"]] == pytest.approx(reference, rel=1e-12)


def scripted(module, losses, accs):
    """Replace evaluate() with a scripted validation curve."""
    curve = iter(zip(losses, accs))
    module.evaluate = lambda *a, **k: next(curve)


def test_early_stopping_stops_at_the_right_epoch(script):
    module = fresh(script, PATIENCE=2)
    scripted(module, [1.0, 0.8, 0.9, 0.85, 0.7, 0.6], itertools.repeat(0.1))
    result = module.train(args(module, 6))
    assert result["epochs_run"] == 4  # epochs 3 and 4 do not beat 0.8: stop after 4


def test_no_early_stopping_without_patience(script):
    module = fresh(script, PATIENCE=None)
    scripted(module, [1.0, 1.1, 1.2, 1.3], itertools.repeat(0.1))
    assert module.train(args(module, 4))["epochs_run"] == 4


def test_epochs_to_target_and_stop_at_target(script):
    module = fresh(script, TARGET_ACC=0.9)
    scripted(module, itertools.repeat(0.5), [0.5, 0.7, 0.92, 0.95])
    result = module.train(args(module, 4))
    assert result["epochs_to_target"] == 3 and result["epochs_run"] == 4
    module = fresh(script, TARGET_ACC=0.9, STOP_AT_TARGET=True)
    scripted(module, itertools.repeat(0.5), [0.5, 0.7, 0.92, 0.95])
    result = module.train(args(module, 4))
    assert result["epochs_to_target"] == 3 and result["epochs_run"] == 3
    module = fresh(script, TARGET_ACC=0.99)
    scripted(module, itertools.repeat(0.5), [0.5, 0.7, 0.92, 0.95])
    assert module.train(args(module, 4))["epochs_to_target"] is None


def test_l1_penalty_by_hand(script):
    module = fresh(script, L1=0.01)
    model = module.new_model()
    by_hand = 0.01 * sum(p.abs().sum().item() for p in model.parameters())
    assert module.penalty(model).item() == pytest.approx(by_hand, rel=1e-6)
    assert fresh(script, L1=0.0).penalty(model) == 0.0


def test_weight_decay_is_l2_in_the_update(script):
    module = fresh(script, OPTIMIZER="sgd", WEIGHT_DECAY=0.1)
    model = module.new_model()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = module.make_optimizer(model, 0.5)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    for old, new in zip(before, model.parameters()):
        assert torch.allclose(new, old - 0.5 * (1 + 0.1 * old))


def test_gradient_clipping_bounds_the_update(script):
    module = fresh(script, OPTIMIZER="sgd", GRAD_CLIP=1.0)
    model = module.new_model()
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    optimizer = module.make_optimizer(model, 1.0)
    for p in model.parameters():
        p.grad = torch.full_like(p, 10.0)
    optimizer.step()
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (before - after).norm().item() == pytest.approx(1.0, rel=1e-5)


def test_result_metrics_present(script):
    module = fresh(script)
    result = module.train(args(module, 2))
    for key in (
        "params_total",
        "params_effective",
        "model_bytes",
        "peak_memory_bytes",
        "samples_per_s",
        "epochs_to_target",
    ):
        assert key in result
    model = module.new_model()
    assert result["params_total"] == sum(p.numel() for p in model.parameters())
    assert result["model_bytes"] == sum(
        t.numel() * t.element_size() for t in model.state_dict().values()
    )
    assert result["samples_per_s"] > 0 and result["peak_memory_bytes"] > 0


def test_dropout_override_reaches_the_model(tmp_path):
    study = generate(
        EXAMPLES / "digits_cnn.py", tmp_path / "d", components=("conv1",), dropout=0.3
    )
    module = load_script(study / "baseline.py")
    assert module.DROPOUT == 0.3 and module.new_model().drop.p == 0.3


def test_dropout_needs_a_dropout_constant(tmp_path):
    from ablagen.errors import ConfigError

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
