"""The CUDA checks, in one module: ``python -m pytest -q tests/gpu`` on a GPU machine
(a minute or two); skipped without CUDA.

- the generated loop makes no host sync per step (the digits CNN, in memory and
  streamed, plain, with noise and clipping, bf16, gradient accumulation, compiled):
  under ``torch.cuda.set_sync_debug_mode("warn")`` no sync is reported from inside
  the step loop, and an epoch of 4x the steps makes the same syncs (the loop reads
  its sums once per epoch). Mode "error" would stop at evaluation's legitimate
  syncs, so each reported sync is attributed to its script line instead
  (tests/hostreads.py; tests/test_no_host_sync.py checks the same on CPU, and this
  recorder without a GPU);
- a generated script runs on the GPU end to end, records the GPU's name, and one
  generated with ``--amp`` trains in bf16 and fp16 to float32's losses (10 %);
- the perturbed optimizer on CUDA: bit-identical to torch.optim at sigma 0, one
  seeded generator per device (and per GPU with two), reproducible noise, the
  fused non-finite check skipping a step;
- with two GPUs, ``ablagen run --device cuda`` puts runs on both, one GPU each.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from hostreads import (
    StepLoopSync,
    assert_none_per_step,
    cuda_syncs,
    generate_digits,
    train_one_epoch,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

MODEL = """
import torch
from torch import nn

INPUT_SHAPE = (32,)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 256)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(256, 4)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    from scriptutil import generate

    from ablagen.generate.context import TrainConfig

    root = tmp_path_factory.mktemp("gpu")
    model = root / "net.py"
    model.write_text(textwrap.dedent(MODEL))
    train = TrainConfig(epochs=3, batch_size=32, sigma=0.01)
    return generate(
        model, root / "s", train=train, dataset="synthetic", components=("fc1",)
    )


KNOWN = {  # loops known to sync per step, and why
    "fp16": "GradScaler.step reads found_inf each step (unless the optimizer is fused)",
    "adaptive": "the adaptive noise schedule reads the gradient norm each step (float)",
}


def _loop(name: str, source: str, *options: str):
    known = KNOWN.get(name)
    xfail = pytest.mark.xfail(strict=True, raises=StepLoopSync, reason=known)
    marks = [xfail] if known else []
    return pytest.param(source, list(options), id=name, marks=marks)


LOOPS = [
    _loop("in_memory", "in_memory"),
    _loop("noise-clip", "in_memory", "--sigma", "0.01", "--grad-clip", "1.0"),
    _loop("bf16", "in_memory", "--amp", "bf16"),
    _loop(
        "bf16-accum-noise-channels_last",
        "in_memory",
        *("--amp", "bf16", "--grad-accum", "4", "--sigma", "0.01", "--channels-last"),
    ),
    _loop("compile", "in_memory", "--compile"),
    _loop("streamed", "streamed"),
    _loop(
        "streamed-bf16-noise-clip",
        "streamed",
        *("--amp", "bf16", "--sigma", "0.01", "--grad-clip", "1.0"),
    ),
    _loop("fp16", "in_memory", "--amp", "fp16"),
    _loop("adaptive", "in_memory", "--sigma", "0.01", "--noise-schedule", "adaptive"),
]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The baseline script of a digits study, per (source, options), made once."""
    cache = {}

    def make(source: str, options: list[str]) -> Path:
        key = (source, tuple(options))
        if key not in cache:
            out = tmp_path_factory.mktemp("sync") / "study"
            cache[key] = generate_digits(out, source, options)
        return cache[key]

    return make


@pytest.mark.parametrize(("source", "options"), LOOPS)
def test_the_step_loop_makes_no_cuda_sync(digits, source, options):
    script = digits(source, options)
    for batch_size in (64, 16):  # warm-up: lazy init, cuDNN, compile (one-off syncs)
        train_one_epoch(script, batch_size, "cuda")

    def syncs(batch_size: int):
        with cuda_syncs(script) as events:
            result = train_one_epoch(script, batch_size, "cuda")
        assert result["status"] == "ok", result
        return events

    assert_none_per_step(script, syncs)


def _run(script: Path, *argv: str) -> dict:
    out = script.parent / f"{script.stem}.{len(argv)}.json"
    proc = subprocess.run(
        [sys.executable, script.name, "--device", "cuda", "--out", out.name, *argv],
        cwd=script.parent,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text())


def test_a_generated_script_trains_on_the_gpu_and_names_it(study):
    result = _run(study / "baseline.py")
    assert result["status"] == "ok" and result["device"] == "cuda"
    assert result["gpu"] == torch.cuda.get_device_name()
    assert result["peak_memory_bytes"] > 0


@pytest.fixture(scope="module")
def amp_study(tmp_path_factory) -> Path:
    """The study's model generated with ``--amp bf16``: its scripts take ``--amp``."""
    from scriptutil import generate

    from ablagen.generate.context import TrainConfig

    root = tmp_path_factory.mktemp("gpu-amp")
    model = root / "net.py"
    model.write_text(textwrap.dedent(MODEL))
    train = TrainConfig(epochs=3, batch_size=32, sigma=0.01, amp="bf16")
    return generate(
        model, root / "s", train=train, dataset="synthetic", components=("fc1",)
    )


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_like_float32_on_the_gpu(amp_study, precision):
    script = amp_study / "baseline.py"
    assert '"--amp"' in script.read_text()  # generated with --amp: never skipped
    mixed = _run(script, "--amp", precision)
    full = _run(script, "--amp", "none")
    assert mixed["status"] == full["status"] == "ok"
    assert mixed["final"] != full["final"]  # the lower precision did run
    for key in ("train_loss", "val_loss", "val_acc"):
        assert mixed["final"][key] == pytest.approx(full["final"][key], rel=0.1), key


# -- the perturbed optimizer's CUDA paths ------------------------------------------


def _model(device: str | list[str]) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    if isinstance(device, str):
        return model.to(device)
    model[0].to(device[0])
    model[2].to(device[1])
    return model


class _Split(nn.Module):
    """Two layers on two GPUs (model parallel): a bucket, a generator, per device."""

    def __init__(self, inner: nn.Module, devices: list[str]) -> None:
        super().__init__()
        self.inner, self.devices = inner, devices

    def forward(self, x):
        h = self.inner[1](self.inner[0](x.to(self.devices[0])))
        return self.inner[2](h.to(self.devices[1]))


def _train(model, opt, steps: int = 5, bad_step: int | None = None):
    gen = torch.Generator().manual_seed(1)
    out_device = next(model.parameters()).device
    for step in range(steps):
        x = torch.randn(32, 8, generator=gen).to(out_device)
        y = torch.randint(0, 3, (32,), generator=gen)
        opt.zero_grad()
        output = model(x)
        nn.functional.cross_entropy(output, y.to(output.device)).backward()
        if step == bad_step:
            next(model.parameters()).grad[0, 0] = float("inf")
        opt.step()
    return [p.detach().cpu().clone() for p in model.parameters()]


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("base", ["sgd", "adam"])
def test_sigma_zero_is_bit_identical_to_torch_optim_on_cuda(base):
    from ablagen.perturb import PerturbedOptimizer

    def make(model):
        if base == "sgd":
            return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return torch.optim.Adam(model.parameters(), lr=1e-2)

    plain = _model("cuda")
    wrapped = _model("cuda")
    reference = _train(plain, make(plain))
    assert _same(reference, _train(wrapped, PerturbedOptimizer(make(wrapped), sigma=0)))


def test_noise_comes_from_a_seeded_generator_on_the_gpu():
    from ablagen.perturb import PerturbedOptimizer

    def run(seed: int):
        model = _model("cuda")
        opt = PerturbedOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1), sigma=0.05, seed=seed
        )
        return _train(model, opt), opt

    first, opt = run(0)
    again, _ = run(0)
    other, _ = run(1)
    assert _same(first, again) and not _same(first, other)
    generators = list(opt._generators.values())
    assert generators and all(g.device.type == "cuda" for g in generators)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_one_generator_per_gpu_with_a_model_split_over_two():
    from ablagen.perturb import PerturbedOptimizer

    devices = ["cuda:0", "cuda:1"]

    def run():
        model = _Split(_model(devices), devices)
        opt = PerturbedOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1), sigma=0.05
        )
        return _train(model, opt), opt

    first, opt = run()
    again, _ = run()
    assert _same(first, again)
    assert {str(g.device) for g in opt._generators.values()} == set(devices)


def test_the_fused_non_finite_check_skips_the_step_on_cuda():
    from ablagen.perturb import PerturbedOptimizer

    model = _model("cuda")
    opt = PerturbedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), sigma=0.05)
    before = _train(model, opt, steps=2)
    model_b = _model("cuda")
    opt_b = PerturbedOptimizer(
        torch.optim.SGD(model_b.parameters(), lr=0.1), sigma=0.05
    )
    after = _train(model_b, opt_b, steps=3, bad_step=2)  # the third step: inf
    assert opt_b.skipped_steps == 1 and opt.skipped_steps == 0
    assert _same(before, after)  # the bad step changed nothing
    assert all(torch.isfinite(p).all() for p in after)


# -- placement over two GPUs -------------------------------------------------------

PROBE = """
import argparse, json, os, time
import torch

parser = argparse.ArgumentParser()
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--device", default="cpu")
parser.add_argument("--out", default=None)
args = parser.parse_args()
x = torch.ones(1024, device=args.device) * args.seed
time.sleep(0.5)
result = {
    "schema": 1, "variant": VARIANT, "status": "ok", "seed": args.seed,
    "final": {"val_acc": float(x.mean()) * 0 + 0.5},
    "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    "device_count": torch.cuda.device_count(),
    "bus": torch.cuda.get_device_properties(0).pci_bus_id,
}
with open(args.out, "w") as fh:
    json.dump(result, fh)
"""


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_runs_are_placed_on_both_gpus_one_each(tmp_path):
    from conftest_orchestrate import write_manifest

    from ablagen.orchestrate import RunOptions, run_study
    from ablagen.orchestrate.store import ResultStore

    study = tmp_path / "study"
    study.mkdir()
    ids = ["baseline", "a:zero", "b:zero", "c:zero"]
    for vid in ids:
        (study / f"{vid.replace(':', '__')}.py").write_text(
            f"VARIANT = {vid!r}\n" + PROBE
        )
    write_manifest(study, ids)
    summary = run_study(study, RunOptions(device="cuda", gpus=(0, 1), seeds=(0,)))
    assert summary.all_ok and summary.jobs == 2
    with ResultStore(study, readonly=True) as store:
        runs = [r.result for r in store.records(status="ok")]
    assert all(r["device_count"] == 1 for r in runs)  # each run sees one GPU
    buses = {torch.cuda.get_device_properties(i).pci_bus_id for i in (0, 1)}
    assert {r["bus"] for r in runs} == buses  # and both GPUs were used
