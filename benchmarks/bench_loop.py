"""The generated training loop against a minimal hand-written loop: samples/s, side by side.

For each model (examples/digits_cnn.py on its own ``build_data()``, examples/resnet_small.py
on the digits split its ``DATASET = "digits"`` names) a study is generated into a
temporary directory and its baseline.py imported in-process; its ``train(args)`` is the
generated side (its ``samples_per_s`` counts the training steps only, not evaluation).
The reference is the loop a person would write in nanoGPT's style: the same model class
from the example file, the same data tensors, the same optimizer, learning rate, batch
size, seed and epochs, and nothing else (randperm, forward, loss, backward, step, the
loss summed on the device; no evaluation, accuracy, checkpoint or divergence checks).
It is timed over the same region as the generated loop: each epoch from before
``model.train()`` to after its last step.

The two loops alternate in one process (A B, B A, A B, ...) after one untimed warm-up
each, so drift and machine noise hit both alike. Reported per model: the median
samples/s of ``--reps`` repetitions and their ratio generated / hand-written (the
verdict), the median of each back-to-back pair's own ratio, the ratio of each loop's
fastest repetition (on a busy machine the steadiest of the three), and whether both
loops reached the same final train loss and the same weights (they do the same work,
so on CPU they should, bit for bit). Goal: >= 0.97x on CPU; >= 0.95x on a GPU with
``--amp bf16``. ``--clock cpu`` times both loops in process CPU seconds instead of
wall-clock seconds (less disturbed by other processes; the same with one thread on a
quiet machine).

The accelerator options are passed to ``ablagen generate`` and done the plain way in
the hand-written loop (autocast, a GradScaler for fp16, channels-last weights and
inputs, ``torch.compile``, micro-batches with one optimizer step per N). With
``--device cuda`` both loops' clocks are read after ``torch.cuda.synchronize()``.

    python benchmarks/bench_loop.py [--models digits_cnn,resnet_small] [--epochs 3]
        [--reps 7] [--threads 1] [--device cpu|cuda] [--clock wall|cpu] [--amp bf16|fp16]
        [--grad-accum N] [--compile] [--channels-last]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

from bench_data import load  # noqa: E402
from bench_knockout import digits  # noqa: E402

from ablagen.generate.context import TrainConfig  # noqa: E402
from ablagen.generate.build import GenerateOptions, generate_study  # noqa: E402
from ablagen.core.errors import AblagenError  # noqa: E402

EXAMPLES = ROOT / "examples"
GOAL = {"cpu": 0.97, "cuda": 0.95}
NOISY = 0.10  # repetitions this far apart cannot resolve a 3% goal: the verdict says so
#: what each accelerator option adds to a generated script (absent: not rendered yet)
MARKERS = {
    "amp": "autocast",
    "channels_last": "channels_last",
    "compile": "torch.compile",
    "grad_accum": "accum",
}


@dataclass(frozen=True)
class Loop:
    """The settings both loops share."""

    epochs: int = 3
    seed: int = 0
    device: str = "cpu"
    amp: str = "none"  # none | bf16 | fp16
    channels_last: bool = False
    compile: bool = False
    grad_accum: int = 1
    clock_kind: str = "wall"  # wall | cpu

    @property
    def clock(self) -> Clock:
        return Clock(self.clock_kind, self.device)

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            amp=self.amp,
            channels_last=self.channels_last,
            compile=self.compile,
            grad_accum=self.grad_accum,
        )

    def options(self) -> list[str]:
        """The accelerator options that are set (names of TrainConfig fields)."""
        defaults = Loop()
        return [n for n in MARKERS if getattr(self, n) != getattr(defaults, n)]


@dataclass(frozen=True)
class Run:
    samples_per_s: float
    train_loss: float  # the last epoch's mean train loss
    weights: dict[str, torch.Tensor]  # the trained model's state_dict, on the CPU


@dataclass
class Side:
    """One model's two loops: the generated baseline.py and the hand-written loop."""

    name: str
    module: object  # the generated baseline.py, imported
    example: object  # the example model file, imported
    factory: str  # the model class or factory the study was generated for
    data: tuple[torch.Tensor, ...]  # the hand-written loop's (x_train, y_train, ...)
    batch_size: int
    lr: float
    missing: list[str]  # accelerator options the generated script has no code for


def import_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare(name: str, loop: Loop, tmp: Path) -> Side:
    """Generate ``name``'s study into ``tmp`` and import its baseline and the example."""
    out = tmp / name
    train = loop.train_config()
    generate_study(
        GenerateOptions(model=str(EXAMPLES / f"{name}.py"), out=out, train=train)
    )
    manifest = json.loads((out / "manifest.json").read_text())
    example = import_file(EXAMPLES / f"{name}.py", f"bench_loop_{name}")
    build = getattr(example, "build_data", None)
    if build is None and getattr(example, "DATASET", None) != "digits":
        fail(f"{name}: the hand-written loop knows build_data() and DATASET digits")
    source = (out / "baseline.py").read_text()
    missing = [n for n in loop.options() if MARKERS[n] not in source]
    return Side(
        name=name,
        module=load(out / "baseline.py"),
        example=example,
        factory=manifest["model"]["name"],
        data=tuple(build()) if build is not None else digits(),
        batch_size=train.batch_size,
        lr=train.lr,
        missing=missing,
    )


class Clock:
    """The clock both loops read; it stands in for the generated module's ``time``.

    ``wall``: ``time.perf_counter``, after ``torch.cuda.synchronize()`` on CUDA (the
    generated loop stops its timer before the queued steps finish); ``cpu``: this
    process's CPU seconds (``time.process_time``), steadier than the wall clock on a
    busy shared machine, and with one thread the same measure when it is quiet.
    """

    def __init__(self, kind: str, device: str) -> None:
        self.read = time.process_time if kind == "cpu" else time.perf_counter
        self.cuda = device == "cuda"

    def __getattr__(self, name):  # anything else the generated module reads from time
        return getattr(time, name)

    def perf_counter(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return self.read()


def generated_train(side: Side, loop: Loop, tmp: Path) -> Run:
    """baseline.py's own ``train(args)``, seeded as its ``main()`` seeds it."""
    module = side.module
    weights = tmp / f"{side.name}.pt"
    args = module.parse_args(
        ["--epochs", str(loop.epochs), "--seed", str(loop.seed)]
        + ["--device", loop.device, "--checkpoint", str(weights)]
    )
    module.time = loop.clock  # its train() times each epoch with time.perf_counter()
    module.random.seed(args.seed)  # as its main() seeds
    module.torch.manual_seed(args.seed)
    with contextlib.redirect_stdout(io.StringIO()):  # its per-epoch lines
        result = module.train(args)
    if result["status"] != "ok":
        raise SystemExit(f"{side.name}: the generated loop ended {result['status']}")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    return Run(result["samples_per_s"], result["final"]["train_loss"], state)


def hand_train(side: Side, loop: Loop) -> Run:
    """The minimal loop: the same model, data, optimizer, seed and epochs, no extras."""
    device = torch.device(loop.device)
    torch.manual_seed(loop.seed)  # the initial weights and dropout
    x_train, y_train = (t.to(device) for t in side.data[:2])
    model = getattr(side.example, side.factory)().to(device)
    if loop.channels_last:  # the batches indexed from x_train keep its layout
        model = model.to(memory_format=torch.channels_last)
        x_train = x_train.contiguous(memory_format=torch.channels_last)
    trained = model
    if loop.compile:
        model = torch.compile(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=side.lr)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(loop.amp)
    autocast = torch.autocast(device.type, dtype) if dtype else contextlib.nullcontext()
    scaler = torch.amp.GradScaler(device.type) if loop.amp == "fp16" else None
    order = torch.Generator().manual_seed(loop.seed)  # the data order of every epoch
    clock = loop.clock
    n, batch_size, accum = len(x_train), side.batch_size, loop.grad_accum
    steps = range(0, n, batch_size)
    train_time = 0.0
    for _ in range(loop.epochs):
        start = clock.perf_counter()
        model.train()
        total_loss = 0.0
        permutation = torch.randperm(n, generator=order).to(device)
        for i, begin in enumerate(steps):
            batch = permutation[begin : begin + batch_size]
            with autocast:
                loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
            micro = loss / accum if accum > 1 else loss
            (scaler.scale(micro) if scaler else micro).backward()
            if (i + 1) % accum == 0 or i + 1 == len(steps):
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            total_loss += loss.detach() * len(batch)
        train_time += clock.perf_counter() - start
        train_loss = float(total_loss) / n
    weights = {k: v.cpu() for k, v in trained.state_dict().items()}
    return Run(n * loop.epochs / train_time, train_loss, weights)


def equal_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    strip = {k.removeprefix("_orig_mod."): v for k, v in a.items()}  # torch.compile's
    return strip.keys() == b.keys() and all(torch.equal(strip[k], b[k]) for k in b)


def fail(message: str) -> None:
    """Bad input: one line, exit 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits_cnn,resnet_small")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"])
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    for name in models:
        if not (EXAMPLES / f"{name}.py").is_file():
            fail(f"no examples/{name}.py: give --models from digits_cnn,resnet_small")
    checks = [
        (args.epochs >= 1, "--epochs must be 1 or more"),
        (args.reps >= 1, "--reps must be 1 or more"),
        (args.threads >= 1, "--threads must be 1 or more"),
        (args.grad_accum >= 1, "--grad-accum must be 1 or more"),
        (
            args.clock == "wall" or args.device == "cpu",
            "--clock cpu measures the CPU: use --clock wall with --device cuda",
        ),
        (bool(models), "--models is empty: give e.g. digits_cnn,resnet_small"),
        (
            args.device == "cpu" or torch.cuda.is_available(),
            "--device cuda without CUDA: use --device cpu",
        ),
        (
            args.amp != "fp16" or args.device == "cuda",
            "--amp fp16 needs CUDA: use --amp bf16 on the CPU",
        ),
    ]
    for ok, message in checks:
        if not ok:
            fail(message)
    args.models = models
    return args


@dataclass
class Tally:
    """One model's measurements: samples/s per repetition, and whether the loops agreed."""

    generated: list[float]
    hand: list[float]
    same_loss: bool = True
    same_weights: bool = True

    def add(self, gen: Run, hand: Run) -> None:
        self.generated.append(gen.samples_per_s)
        self.hand.append(hand.samples_per_s)
        self.same_loss &= gen.train_loss == hand.train_loss
        self.same_weights &= equal_weights(gen.weights, hand.weights)

    def paired(self) -> float:
        """The median of each repetition's own ratio (the pair ran back to back)."""
        return statistics.median(g / h for g, h in zip(self.generated, self.hand))

    def spread(self) -> float:
        """The larger of the two loops' (max - min) / median over the repetitions."""
        return max(
            (max(v) - min(v)) / statistics.median(v)
            for v in (self.generated, self.hand)
        )

    def best(self) -> float:
        """The ratio of each loop's fastest repetition (its least disturbed one)."""
        return max(self.generated) / max(self.hand)


def measure(sides: list[Side], loop: Loop, reps: int, tmp: Path) -> dict[str, Tally]:
    """Warm both loops up once, then alternate them: A B, B A, A B, ..."""
    tallies = {}
    for side in sides:
        generated_train(side, loop, tmp)  # warm-up: allocator, kernels, compilation
        hand_train(side, loop)
        tallies[side.name] = Tally([], [])
    for rep in range(reps):
        for side in sides:
            if rep % 2 == 0:
                gen = generated_train(side, loop, tmp)
                hand = hand_train(side, loop)
            else:
                hand = hand_train(side, loop)
                gen = generated_train(side, loop, tmp)
            tallies[side.name].add(gen, hand)
    return tallies


def flags(loop: Loop, names: list[str]) -> str:
    """``names`` (TrainConfig fields) as the command-line flags that set them."""
    words = []
    for name in names:
        value = getattr(loop, name)
        flag = f"--{name.replace('_', '-')}"
        words.append(flag if value is True else f"{flag} {value}")
    return " ".join(words)


def report(sides: list[Side], tallies: dict[str, Tally], loop: Loop, args) -> None:
    print(
        f"torch {torch.__version__}, device {args.device}, {args.threads} thread(s), "
        f"{args.clock} clock, {args.epochs} epochs, median of {args.reps} interleaved "
        f"repetitions, options: {flags(loop, loop.options()) or 'none'}"
    )
    print(
        "| model | generated samples/s | hand-written samples/s | ratio "
        "| median paired ratio | best / best | same final loss | same weights |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---|")
    goal, lines = GOAL[args.device], []
    for side in sides:
        tally = tallies[side.name]
        gen, hand = statistics.median(tally.generated), statistics.median(tally.hand)
        ratio = gen / hand
        print(
            f"| {side.name} | {gen:.0f} | {hand:.0f} | {ratio:.3f}x | {tally.paired():.3f}x "
            f"| {tally.best():.3f}x "
            f"| {tally.same_loss} | {tally.same_weights} |"
        )
        verdict = "met" if ratio >= goal else "not met"
        if tally.spread() > NOISY:
            verdict += (
                f"; noisy: samples/s varied by {tally.spread():.0%} over the repetitions, "
                "so trust 'best / best' more, or rerun on a quiet machine"
            )
        if side.missing:
            missing = flags(loop, side.missing)
            verdict += f"; not like for like: baseline.py has no code for {missing}"
        lines.append(
            f"{side.name}: generated {gen:.0f} samples/s, hand {hand:.0f} samples/s, "
            f"ratio {ratio:.3f}x (goal >= {goal}x: {verdict})"
        )
    for side in sides:
        tally = tallies[side.name]
        print(
            f"{side.name} samples/s over repetitions: generated "
            f"{min(tally.generated):.0f}..{max(tally.generated):.0f}, hand "
            f"{min(tally.hand):.0f}..{max(tally.hand):.0f}"
        )
    print("\n".join(lines))


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    loop = Loop(
        epochs=args.epochs,
        device=args.device,
        amp=args.amp,
        channels_last=args.channels_last,
        compile=args.compile,
        grad_accum=args.grad_accum,
        clock_kind=args.clock,
    )
    with tempfile.TemporaryDirectory() as tmp:
        try:
            sides = [prepare(name, loop, Path(tmp)) for name in args.models]
        except AblagenError as exc:
            fail(str(exc).splitlines()[0])
        tallies = measure(sides, loop, args.reps, Path(tmp))
    report(sides, tallies, loop, args)


if __name__ == "__main__":
    main()
