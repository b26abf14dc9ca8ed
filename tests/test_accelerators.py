"""The scripts' accelerator options (generate --amp, --grad-accum, --compile,
--channels-last) against torch itself, and mixed precision with the perturbed
optimizer: the order unscale -> clip -> noise -> step, and a step the GradScaler
skips draws no noise."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from ablagen import perturb
from ablagen.generate.context import TrainConfig
from conftest import EXAMPLES, MODELS, run_cli
from scriptutil import generate, load_script, new_model
from test_noise_block import noise_block


@pytest.fixture(scope="module")
def make(tmp_path_factory):
    """A loaded script (baseline, or ``variant``) per model and training config."""
    cache = {}

    def build(model=MODELS / "mlp.py", variant="baseline", dropout=None, **train):
        key = (str(model), dropout, tuple(sorted(train.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp("accel") / "s"
            config = TrainConfig(**train)
            generate(model, out, dataset="synthetic", dropout=dropout, train=config)
            cache[key] = out
        return load_script(cache[key] / f"{variant}.py")

    return build


def run(module, *flags, samples=None, seed=0):
    """``train()`` with the script's own flags, model init seeded as main() does; with
    ``samples``, on that many training samples."""
    if samples is not None:
        load = module.load_data

        def first_samples():
            x, y, *val = load()
            return (x[:samples], y[:samples], *val)

        module.load_data = first_samples
    torch.manual_seed(seed)
    return module.train(module.parse_args([str(flag) for flag in flags]))


def losses(result):
    return [(h["train_loss"], h["val_loss"]) for h in result["history"]]


# -- gradient accumulation ------------------------------------------------------


def test_grad_accum_is_one_big_batch(make):
    """4 micro-batches of 16 give the update of one batch of 64 (the same samples)."""
    module = make(optimizer="sgd", lr=0.5, grad_accum=4)
    big = run(module, "--epochs", 2, "--batch-size", 64, "--grad-accum", 1, samples=256)
    accumulated = run(
        module, "--epochs", 2, "--batch-size", 16, "--grad-accum", 4, samples=256
    )
    small = run(
        module, "--epochs", 2, "--batch-size", 16, "--grad-accum", 1, samples=256
    )
    for (a_train, a_val), (b_train, b_val) in zip(losses(big), losses(accumulated)):
        assert b_train == pytest.approx(a_train, rel=1e-5)
        assert b_val == pytest.approx(a_val, rel=1e-5)
    assert losses(small)[-1][1] != pytest.approx(losses(big)[-1][1], rel=1e-3)


def test_grad_accum_adds_noise_once_per_optimizer_step(make):
    module = make(sigma=0.01, grad_accum=3)
    calls = []
    plain = module.GradientNoise

    class Counting(plain):
        def add_(self, *args, **kwargs):
            calls.append(self.step)
            return super().add_(*args, **kwargs)

    module.GradientNoise = Counting
    run(module, "--epochs", 1, "--batch-size", 10, samples=200)  # 20 batches
    assert calls == list(range(math.ceil(20 / 3)))  # the last, shorter group too


def test_grad_accum_keeps_the_cyclic_schedule_in_optimizer_steps(make):
    module = make(scheduler="cyclic", lr=0.1, grad_accum=2)
    lrs = []
    plain = module.make_optimizer

    def recording(model, lr):
        optimizer = plain(model, lr)
        optimizer.register_step_pre_hook(
            lambda opt, args, kwargs: lrs.append(opt.param_groups[0]["lr"])
        )
        return optimizer

    module.make_optimizer = recording
    run(module, "--epochs", 4, "--batch-size", 10, samples=100)  # 5 steps per epoch
    model = nn.Linear(1, 1)
    reference = torch.optim.SGD(model.parameters(), lr=0.1)
    cyclic = torch.optim.lr_scheduler.CyclicLR(
        reference, base_lr=0.01, max_lr=0.1, step_size_up=2 * 5, cycle_momentum=False
    )
    expected = []
    for _ in range(20):
        expected.append(reference.param_groups[0]["lr"])
        reference.step()
        cyclic.step()
    assert lrs == pytest.approx(expected)


# -- mixed precision ------------------------------------------------------------


def test_amp_none_is_the_plain_script_bit_for_bit(make):
    amp, plain = make(amp="bf16", epochs=2), make(epochs=2)
    assert losses(run(amp, "--amp", "none")) == losses(run(plain))


def test_amp_bf16_runs_the_forward_passes_in_bfloat16_on_cpu(make):
    module = make(model=MODELS / "cnn_mixed.py", amp="bf16", epochs=2)
    dtypes = set()
    build = module.ablate  # gets the fresh model, returns the one that trains

    def hooked(model):
        model = build(model)
        model.fc.register_forward_hook(lambda mod, inp, out: dtypes.add(out.dtype))
        return model

    module.ablate = hooked
    mixed = run(module)
    assert dtypes == {torch.bfloat16}  # training and evaluation
    full = run(module, "--amp", "none")
    assert dtypes == {torch.bfloat16, torch.float32}
    assert mixed["status"] == full["status"] == "ok"
    assert losses(mixed) != losses(full)
    for (a, b), (c, d) in zip(losses(mixed), losses(full)):
        assert a == pytest.approx(c, rel=0.05) and b == pytest.approx(d, rel=0.05)


def test_amp_fp16_on_cpu_and_no_grad_accum_are_refused_in_one_line(make):
    script = make(amp="fp16", grad_accum=2).__file__
    for flags, message in [
        ([], "error: --amp fp16 needs --device cuda; on CPU use --amp bf16"),
        (["--amp", "bf16", "--grad-accum", "0"], "error: --grad-accum must be 1"),
    ]:
        proc = subprocess.run([sys.executable, script, *flags], capture_output=True)
        assert proc.returncode == 2 and proc.stdout == b""
        assert proc.stderr.decode().splitlines() == [message] or (
            proc.stderr.decode().startswith(message)
            and len(proc.stderr.decode().splitlines()) == 1
        )


def test_amp_fp16_loop_runs_with_a_grad_scaler(make, monkeypatch):
    """The fp16 path (CUDA only from the command line) is the same code on CPU: every
    backward goes through an enabled GradScaler, and the losses follow float32's."""
    module = make(amp="fp16", sigma=0.01, grad_clip=1.0, epochs=2)
    scalers = []

    class Recording(torch.amp.GradScaler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.scaled = self.stepped = 0
            scalers.append(self)

        def scale(self, outputs):
            self.scaled += 1
            return super().scale(outputs)

        def step(self, optimizer, *args, **kwargs):
            self.stepped += 1
            return super().step(optimizer, *args, **kwargs)

    monkeypatch.setattr(torch.amp, "GradScaler", Recording)
    args = module.parse_args(["--amp", "none"])
    args.amp = "fp16"  # past the CPU refusal
    torch.manual_seed(0)
    half = module.train(args)
    (scaler,) = scalers
    steps = scaler.stepped
    assert half["status"] == "ok" and scaler.is_enabled()
    assert steps > 0 and scaler.scaled == steps  # one scaled backward per step
    assert scaler.get_scale() > 1.0  # the losses were multiplied up
    full = run(module, "--amp", "none")
    assert full["status"] == "ok" and not scalers[-1].is_enabled()
    assert losses(half) != losses(full)  # fp16 did run
    for (a, b), (c, d) in zip(losses(half), losses(full)):
        assert a == pytest.approx(c, rel=0.05) and b == pytest.approx(d, rel=0.05)


@pytest.mark.parametrize(
    "flags", [["--amp", "fp8"], ["--grad-accum", "0"]], ids=["amp", "grad-accum"]
)
def test_generate_refuses_bad_accelerator_options(flags, tmp_path, capsys):
    out = tmp_path / "s"
    code, _, err = run_cli(
        ["generate", MODELS / "mlp.py", "--out", out, *flags], capsys
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert flags[0] in err and not out.exists()


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def scaled_steps(model, optimizer, scaler, before_step, overflow_at=2):
    """Six GradScaler steps; at step ``overflow_at`` a gradient is inf (as fp16 overflows)."""
    data = torch.Generator().manual_seed(5)
    for step in range(6):
        x, y = torch.randn(8, 6, generator=data), torch.randint(
            0, 3, (8,), generator=data
        )
        scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
        if step == overflow_at:
            model[0].weight.grad[0, 0] = math.inf
        before_step()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    return [p.detach().clone() for p in model.parameters()]


def test_skipped_fp16_step_draws_no_noise_like_the_library():
    """Script order (unscale, clip, noise, step) = the library under the scaler, bit for
    bit; the overflowed step draws nothing, so the noise stream follows the steps taken.
    """
    block = noise_block("gaussian", "constant", amp="fp16")
    model = net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    noise = block["GradientNoise"](optimizer, 0.1, 7, "cpu")
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    states = []

    def unscale_clip_noise():
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        states.append(noise.generator.get_state())
        noise.add_(skip_nonfinite=scaler.is_enabled())

    got = scaled_steps(model, optimizer, scaler, unscale_clip_noise)
    assert noise.step == 5  # six steps, one skipped
    after_skip = noise.generator.get_state()
    assert torch.equal(states[3], states[2])  # the overflowed step drew nothing
    assert not torch.equal(after_skip, states[2])

    model = net()
    library = perturb.PerturbedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        sigma=0.1,
        seed=7,
        clip_norm=1.0,
        prefetch=False,
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    expected = scaled_steps(model, library, scaler, lambda: None)
    assert library.current_sigma() == 0.1 and library._step == 5
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))


def test_library_under_a_grad_scaler_at_zero_sigma_is_torch_optim():
    model = net()
    library = perturb.PerturbedOptimizer(
        torch.optim.Adam(model.parameters(), lr=1e-2), sigma=0.0, clip_norm=0.5
    )
    got = scaled_steps(model, library, torch.amp.GradScaler("cpu"), lambda: None)
    model = net()
    adam = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")

    def unscale_clip():
        scaler.unscale_(adam)
        nn.utils.clip_grad_norm_(model.parameters(), 0.5)

    expected = scaled_steps(model, adam, scaler, unscale_clip)
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))


# -- channels last, torch.compile ----------------------------------------------


def test_channels_last_trains_nhwc_with_the_same_metrics(make):
    module = make(model=MODELS / "cnn_mixed.py", channels_last=True, epochs=2)
    formats = []
    build = module.ablate  # gets the fresh model, returns the one that trains

    def hooked(model):
        model = build(model)
        model.conv.register_forward_pre_hook(
            lambda mod, inp: formats.append(
                inp[0].is_contiguous(memory_format=torch.channels_last)
                and mod.weight.is_contiguous(memory_format=torch.channels_last)
            )
        )
        return model

    module.ablate = hooked
    nhwc = run(module)
    assert formats and all(formats)
    plain = run(make(model=MODELS / "cnn_mixed.py", epochs=2))
    for (a, b), (c, d) in zip(losses(nhwc), losses(plain)):
        assert a == pytest.approx(c, rel=1e-5) and b == pytest.approx(d, rel=1e-5)


def test_channels_last_needs_an_image_model(tmp_path, capsys):
    code, _, err = run_cli(
        ["generate", MODELS / "mlp.py", "--out", tmp_path / "s", "--channels-last"],
        capsys,
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--channels-last" in err and not (tmp_path / "s").exists()


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["fc1__zero", "fn_relu__identity"])
def test_the_ablation_survives_torch_compile(make, variant):
    """A hook ablation (fc1 zeroed) and a graph edit (a functional relu skipped):
    the compiled model computes the ablated model, and trains like it (without
    dropout: compiled code draws its masks from another random stream)."""
    model_file = EXAMPLES / "digits_cnn.py"
    kwargs = dict(model=model_file, variant=variant, dropout=0.0, epochs=1)
    compiled_script = make(compile=True, **kwargs)
    eager_script = make(**kwargs)
    torch.manual_seed(0)
    ablated = compiled_script.ablate(new_model(compiled_script)).eval()
    torch.manual_seed(0)
    intact = new_model(compiled_script).eval()
    x = torch.rand(16, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(torch.compile(ablated)(x), ablated(x), atol=1e-5)
        assert not torch.allclose(ablated(x), intact(x), atol=1e-3)
    compiled = run(compiled_script, samples=256)
    eager = run(eager_script, samples=256)
    for (a, b), (c, d) in zip(losses(compiled), losses(eager)):
        assert a == pytest.approx(c, rel=1e-4) and b == pytest.approx(d, rel=1e-4)


STREAMED = """
import torch
from torch import nn
from torch.utils.data import TensorDataset

INPUT_SHAPE = (1, 6, 6)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).flatten(1))


def build_datasets():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(320, 1, 6, 6, generator=g)
    y = x.flatten(1)[:, :3].argmax(dim=1)
    return TensorDataset(x[:256], y[:256]), TensorDataset(x[256:], y[256:])
"""


def test_streamed_loop_takes_every_option(tmp_path):
    """DataLoader batches: accumulation is one big batch there too, and bf16,
    channels-last and accumulation run together."""
    model = tmp_path / "net.py"
    model.write_text(STREAMED)
    train = TrainConfig(
        epochs=2, optimizer="sgd", lr=0.2, amp="bf16", grad_accum=4, channels_last=True
    )
    generate(model, tmp_path / "s", train=train, num_workers=0)
    module = load_script(tmp_path / "s" / "baseline.py")
    plain = ["--amp", "none"]
    big = run(module, *plain, "--batch-size", 64, "--grad-accum", 1)
    accumulated = run(module, *plain, "--batch-size", 16, "--grad-accum", 4)
    for (a, b), (c, d) in zip(losses(big), losses(accumulated)):
        assert a == pytest.approx(c, rel=1e-5) and b == pytest.approx(d, rel=1e-5)
    mixed = run(module, "--batch-size", 16)
    assert mixed["status"] == "ok" and losses(mixed) != losses(accumulated)
