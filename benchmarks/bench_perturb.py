"""What gradient noise costs: ``PerturbedOptimizer`` against the naive way and no noise.

Run alone: ``python benchmarks/bench_perturb.py [--quick] [--json PATH]``.
Everything is a ratio of medians measured side by side in one run, the
variants interleaved step by step, so a busy machine slows all of them alike.

(a) noise alone, per step: one ``normal_`` over a flat buffer of all parameter
    elements (the floor), ours drawing in line (``perturb_grads``: guard +
    noise + fused add), the naive ``p.grad.add_(torch.randn_like(p) * sigma)``
    per tensor, and ours with the noise drawn ahead (what is left of it in the
    step when the side thread had a forward and backward pass's time);
(b) a whole training step (forward, backward, step; batch 32), perturbed over
    plain, for SGD with momentum and Adam, foreach and fused: the optimizer
    with its defaults (noise drawn ahead on a side thread when torch leaves a
    core free, as with ``--threads 1`` on two cores) and with the noise drawn
    in line (``prefetch=False``).
Models: the digits CNN (``examples/digits_cnn.py``, 38k parameters), a tiny
6k-parameter CNN (where fixed per-step costs show most), a ResNet-18 (CIFAR
stem: 3x3 conv, 32x32 input; the same 62 parameter tensors and 11.7M elements
as torchvision's) and a 10M MLP.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from ablagen.analyze.loading import load_model  # noqa: E402
from ablagen.perturb import PerturbedOptimizer  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

SIGMA = 0.01
BATCH = 32


# -- models ------------------------------------------------------------------------


class Block(nn.Module):
    """ResNet basic block: two 3x3 convs with batch norm, and a shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet18(classes: int = 1000) -> nn.Module:
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 3, 1, 1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
    ]
    cin = 64
    for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes)]
    return nn.Sequential(*layers)


def digits_cnn() -> nn.Module:
    """The project's digits CNN, ``examples/digits_cnn.py`` (38,282 parameters)."""
    return load_model(str(EXAMPLES / "digits_cnn.py")).model


def tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 10),
    )  # fmt: skip


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(784, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(),
        nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 10),
    )  # fmt: skip


@dataclass(frozen=True)
class Workload:
    name: str
    model: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    classes: int


WORKLOADS = [
    Workload("digits CNN", digits_cnn, (1, 8, 8), 10),
    Workload("tiny CNN", tiny_cnn, (1, 8, 8), 10),
    Workload("ResNet-18", resnet18, (3, 32, 32), 1000),
    Workload("MLP 10M", mlp, (784,), 10),
]

BASES: dict[str, Callable[[Iterator[nn.Parameter]], torch.optim.Optimizer]] = {
    "SGD-momentum foreach": lambda p: torch.optim.SGD(
        p, lr=1e-3, momentum=0.9, foreach=True
    ),
    "SGD-momentum fused": lambda p: torch.optim.SGD(
        p, lr=1e-3, momentum=0.9, fused=True
    ),
    "Adam foreach": lambda p: torch.optim.Adam(p, lr=1e-4, foreach=True),
    "Adam fused": lambda p: torch.optim.Adam(p, lr=1e-4, fused=True),
}


# -- timing --------------------------------------------------------------------------


def interleaved(
    variants: dict[str, Callable[[], object]], reps: int, warmup: int = 2
) -> dict[str, float]:
    """Median seconds per call of each variant, the variants taking turns every rep."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


@dataclass
class NoiseRow:
    workload: str
    tensors: int
    elements: int
    normal_ms: float
    ours_ms: float
    unguarded_ms: float  # ours with skip_nonfinite=False: no finite check, no sync
    naive_ms: float
    ahead_ms: float  # ours, the noise drawn ahead on the side thread

    @property
    def ours_over_normal(self) -> float:
        return self.ours_ms / self.normal_ms

    @property
    def naive_over_ours(self) -> float:
        return self.naive_ms / self.ours_ms


@dataclass
class StepRow:
    workload: str
    base: str
    plain_ms: float
    perturbed_ms: float  # the optimizer's defaults
    inline_ms: float  # prefetch=False
    prefetched: bool  # whether the defaults drew noise ahead

    @property
    def ratio(self) -> float:
        return self.perturbed_ms / self.plain_ms

    @property
    def inline_ratio(self) -> float:
        return self.inline_ms / self.plain_ms


def noise_cost(workload: Workload, reps: int) -> NoiseRow:
    """(a): the noise alone, four ways, on gradients shaped like the model's."""
    params = list(workload.model().parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    elements = sum(p.numel() for p in params)
    flat = torch.empty(elements)
    generator = torch.Generator().manual_seed(0)
    ours = PerturbedOptimizer(
        torch.optim.SGD(params, lr=0.0), sigma=SIGMA, prefetch=False
    )
    unguarded = PerturbedOptimizer(
        torch.optim.SGD(params, lr=0.0),
        sigma=SIGMA,
        skip_nonfinite=False,
        prefetch=False,
    )
    ours.perturb_grads()
    buffers = [bucket.flat.data_ptr() for bucket in ours._buckets]  # noqa: SLF001
    grads = [p.grad.data_ptr() for p in params]

    def naive() -> None:
        for p in params:
            p.grad.add_(torch.randn_like(p) * SIGMA)

    times = interleaved(
        {
            "normal_": lambda: flat.normal_(generator=generator),
            "ours": ours.perturb_grads,
            "unguarded": unguarded.perturb_grads,
            "naive": naive,
        },
        reps,
    )
    # no per-step allocation: the same noise buffers, gradients updated in place
    assert buffers == [
        bucket.flat.data_ptr() for bucket in ours._buckets
    ]  # noqa: SLF001
    assert grads == [p.grad.data_ptr() for p in params]
    ms = {name: seconds * 1e3 for name, seconds in times.items()}
    return NoiseRow(
        workload.name,
        len(params),
        elements,
        ms["normal_"],
        ms["ours"],
        ms["unguarded"],
        ms["naive"],
        ahead_cost(params, times["normal_"], reps),
    )


def ahead_cost(params: list[nn.Parameter], draw_s: float, reps: int) -> float:
    """Milliseconds ``perturb_grads`` takes when the side thread had the time a forward
    and backward pass would give it: before each call, untimed, twice the draw's time
    of small matrix products (torch work that lets go of the GIL, as theirs does)."""
    ahead = PerturbedOptimizer(
        torch.optim.SGD(params, lr=0.0), sigma=SIGMA, prefetch=True
    )
    a = torch.randn(64, 64)
    times = []
    for _ in range(reps + 2):
        end = time.perf_counter() + 2 * draw_s + 1e-3
        while time.perf_counter() < end:
            torch.mm(a, a)
        start = time.perf_counter()
        ahead.perturb_grads()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:]) * 1e3


def step_cost(workload: Workload, base_name: str, reps: int) -> StepRow:
    """(b): forward + backward + step, plain and perturbed, on the same batch."""
    torch.manual_seed(0)
    model = workload.model()
    twin, triplet = copy.deepcopy(model), copy.deepcopy(model)
    plain = BASES[base_name](model.parameters())
    perturbed = PerturbedOptimizer(BASES[base_name](twin.parameters()), sigma=SIGMA)
    inline = PerturbedOptimizer(
        BASES[base_name](triplet.parameters()), sigma=SIGMA, prefetch=False
    )
    x = torch.randn(BATCH, *workload.input_shape)
    y = torch.randint(0, workload.classes, (BATCH,))

    def train_step(net: nn.Module, opt: torch.optim.Optimizer) -> Callable[[], None]:
        def run() -> None:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()

        return run

    times = interleaved(
        {
            "plain": train_step(model, plain),
            "perturbed": train_step(twin, perturbed),
            "inline": train_step(triplet, inline),
        },
        reps,
    )
    prefetched = perturbed._ahead.current is not None  # noqa: SLF001
    ms = {name: seconds * 1e3 for name, seconds in times.items()}
    return StepRow(
        workload.name,
        base_name,
        ms["plain"],
        ms["perturbed"],
        ms["inline"],
        prefetched,
    )


# -- report --------------------------------------------------------------------------


def noise_table(rows: list[NoiseRow]) -> str:
    lines = [
        "| params | tensors | elements | normal_ ms | ours ms | ours, no guard ms "
        "| naive ms | ours / normal_ (goal <= 1.15) | naive / ours (goal >= 1.3) "
        "| ours ns/elem | ours, drawn ahead: ms left in the step | that / normal_ |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.workload} | {r.tensors} | {r.elements:,} | {r.normal_ms:.3f} "
            f"| {r.ours_ms:.3f} | {r.unguarded_ms:.3f} | {r.naive_ms:.3f} "
            f"| {r.ours_over_normal:.2f}x | {r.naive_over_ours:.2f}x "
            f"| {r.ours_ms * 1e6 / r.elements:.2f} | {r.ahead_ms:.3f} "
            f"| {r.ahead_ms / r.normal_ms:.2f}x |"
        )
    return "\n".join(lines)


def step_table(rows: list[StepRow]) -> str:
    lines = [
        "| model | base optimizer | plain step ms | perturbed step ms "
        "| perturbed / plain | noise drawn ahead | in line: step ms "
        "| in line / plain |",
        "|---|---|---:|---:|---:|:---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.workload} | {r.base} | {r.plain_ms:.2f} | {r.perturbed_ms:.2f} "
            f"| {r.ratio:.3f}x | {'yes' if r.prefetched else 'no'} "
            f"| {r.inline_ms:.2f} | {r.inline_ratio:.3f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="few repetitions: checks it runs"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--threads", type=int, help="torch intra-op threads (default: torch's)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    noise_reps = 5 if args.quick else 25
    step_reps = {
        "digits CNN": 30 if args.quick else 2000,
        "tiny CNN": 30 if args.quick else 2000,
        "ResNet-18": 2 if args.quick else 8,
    }
    noise_rows = [noise_cost(w, noise_reps) for w in WORKLOADS]
    step_rows = [
        step_cost(w, base, step_reps.get(w.name, 5 if args.quick else 30))
        for w in WORKLOADS
        for base in BASES
    ]
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, sigma={SIGMA}, batch {BATCH}")
    print("\n(a) noise alone, per step (median)\n")
    print(noise_table(noise_rows))
    print("\n(b) whole training step (median)\n")
    print(step_table(step_rows))
    if args.json:
        results = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "quick": args.quick,
            "noise": [
                asdict(r)
                | {
                    "ours_over_normal": r.ours_over_normal,
                    "naive_over_ours": r.naive_over_ours,
                }
                for r in noise_rows
            ],
            "step": [
                asdict(r) | {"ratio": r.ratio, "inline_ratio": r.inline_ratio}
                for r in step_rows
            ],
        }
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
