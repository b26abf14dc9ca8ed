"""Ablation out:zero of class ResNet.

out (Linear, a layer) -- zero: its output is replaced by zeros.

Model:  ../models/residual.py (class ResNet, sha256 1a02e1564647e609)
Run:    python out__zero.py --epochs 1 --seed 0 --out result.json
Made by ablagen 0.1.0; to regenerate, run in this directory:
    ablagen generate ../models/residual.py --out . --dataset synthetic --components block:identity --components block.lin:zero --components fn.gelu:mean --components 'block.lin[2]:mask' --components out:zero --epochs 1

Standalone: needs Python, torch, never ablagen. Writes a JSON
result (per-epoch and final metrics, parameter counts, wall time) to --out and
exits 0 (ok), 1 (failed) or 3 (diverged).
"""

import argparse
import json
import math
import os
import random
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# -----------------------------------------------------------------------------
# config: plain values; the command-line flags in parse_args() override some
EPOCHS = 1  # passes over the training data (--epochs)
BATCH_SIZE = 64  # (--batch-size)
LR = 0.003  # learning rate (--lr)
OPTIMIZER = "adam"  # sgd | momentum | adam | adamw | rmsprop
MOMENTUM = 0.9  # for momentum and rmsprop
WEIGHT_DECAY = 0.0  # L2 penalty (decoupled for adamw)
L1 = 0.0  # L1 penalty on all weights, added to the loss
GRAD_CLIP = 0.0  # max global gradient norm (0: off)
SCHEDULER = "none"  # none | step | exponential | cosine | cyclic | warmup
STEP_SIZE = 10  # step: decay every STEP_SIZE epochs
GAMMA = 0.5  # step / exponential: decay factor
WARMUP_EPOCHS = 2  # warmup: epochs to reach LR linearly
NOISE = "gaussian"  # gradient noise kind of the perturbed update
SIGMA = 0.0  # base noise std (0: exactly the plain optimizer)
NOISE_SCHEDULE = "constant"  # how sigma changes over steps
TASK = "classification"  # classification (cross-entropy) | regression (MSE)
DATASET = "synthetic"  # digits | wine | breast_cancer | synthetic | build_data
VAL_FRACTION = 0.2  # built-in data: share held out for validation
SPLIT_SEED = 0  # fixes the train/validation split for every variant
TARGET_ACC = 0.9  # "epochs to target": first epoch at this val accuracy
STOP_AT_TARGET = False  # stop training once the target is reached
PATIENCE = None  # early stopping: epochs without val-loss gain (None: off)
SEED = 0  # (--seed) model init, data order, dropout and noise
DEVICE = "cpu"  # (--device) cpu | cuda


# -----------------------------------------------------------------------------
# model: embedded from ../models/residual.py; edit that file and regenerate
class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)

    def forward(self, x):
        return F.gelu(self.lin(x)) + x


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        return self.out(self.block(x))


SAMPLE_SHAPE = (3, 6)  # one input sample, no batch dimension
NUM_OUTPUTS = 2  # size of the model's last output dimension


def new_model():
    """A freshly initialised model (the same weights for every variant at one seed)."""
    return ResNet()


# -----------------------------------------------------------------------------
# ablation: out (Linear, layer) -- zero: its output is replaced by zeros
VARIANT = "out:zero"
COMPONENT = "out"
ABLATED_PARAMS = 14  # parameters that no longer affect the output


def zero_output(module, inputs, output):
    """A forward hook: the module still runs, zeros go on in place of its output."""
    return torch.zeros_like(output)


def ablate(model):
    """Ablate out (Linear): its output is replaced by zeros."""
    hook = zero_output
    model.get_submodule("out").register_forward_hook(hook)
    return model


# -----------------------------------------------------------------------------
# data: 512 seeded synthetic samples, 0.2 held out
SYNTHETIC_SAMPLES = 512  # train + validation samples


def load_data():
    """Seeded synthetic data shaped like the model's input; targets come from a fixed
    random projection of the inputs, so there is something to learn."""
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    x = torch.randn((SYNTHETIC_SAMPLES, *SAMPLE_SHAPE), generator=generator)
    projection = torch.randn(x[0].numel(), NUM_OUTPUTS, generator=generator)
    scores = x.reshape(len(x), -1).float() @ projection
    y = scores.argmax(dim=1) if TASK == "classification" else scores
    return split(x, y)


def split(x, y):
    """A train/validation split fixed by SPLIT_SEED: every variant sees the same data."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = max(1, round(VAL_FRACTION * len(x)))
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


# -----------------------------------------------------------------------------
# optimizer: torch.optim wrapped in the perturbation-aware optimizer below
# --- perturbation-aware optimizer (embedded from ablagen.perturb v0.1.0; edit there, not here) ---
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Sequence, TypeVar

C = TypeVar("C", bound=type)


def _registrar(registry: dict[str, Any]) -> Callable[[str], Callable[[C], C]]:
    """``register = _registrar(REGISTRY)``; ``@register("name")`` adds a class."""

    def register(name: str) -> Callable[[C], C]:
        def add(cls: C) -> C:
            cls.name = name
            registry[name] = cls
            return cls

        return add

    return register


def _make(registry: dict[str, Any], what: str, name: str, kwargs: dict) -> Any:
    if name not in registry:
        valid = ", ".join(sorted(registry))
        raise ValueError(f"unknown {what} {name!r}; valid names: {valid}")
    return registry[name](**kwargs)


@dataclass
class NoiseBatch:
    """One bucket's tensors at one step: parameters sharing group, device, dtype.

    ``views[i]``, ``grads[i]`` and ``params[i]`` belong to one parameter, and
    ``views`` are slices of ``flat``, one buffer reused every step.
    """

    flat: torch.Tensor
    views: list[torch.Tensor]
    grads: list[torch.Tensor]
    params: list[torch.Tensor]
    generator: torch.Generator


class NoiseKind:
    """How δ_t is drawn; add one with a subclass and ``@register_noise("name")``.

    A kind writes δ at *unit strength* into ``batch.views``, in place; the
    optimizer multiplies it by σ_t and the scales, then adds it to the
    gradients, so a kind never sees σ. Draw random numbers only from the
    generator given (reproducible) and with one call over the flat buffer
    rather than one per tensor (fast). Two ways to write one:

    - ``draw(flat, generator)``, the random part, which must not read the
      gradients, and optionally ``shape(batch)``, what depends on them. The
      optimizer can then draw the next step's numbers on a side thread while
      forward and backward run (``prefetch``);
    - or ``__call__(batch)`` alone, everything at step time.
    """

    name: ClassVar[str] = ""

    def draw(self, flat: torch.Tensor, generator: torch.Generator) -> None:
        """Fill ``flat`` with the gradient-independent random part of δ."""
        raise NotImplementedError

    def shape(self, batch: NoiseBatch) -> None:
        """Turn the drawn numbers in ``batch.views`` into δ; may read the gradients."""

    def __call__(self, batch: NoiseBatch) -> None:
        self.draw(batch.flat, batch.generator)
        self.shape(batch)

    @property
    def drawn_apart(self) -> bool:
        """True when the kind draws through ``draw`` (so it can be drawn ahead)."""
        return type(self).__call__ is NoiseKind.__call__


NOISE_KINDS: dict[str, type[NoiseKind]] = {}
register_noise = _registrar(NOISE_KINDS)


def make_noise(name: str, **kwargs: Any) -> NoiseKind:
    """A registered noise kind by name, e.g. ``make_noise("dropnoise", p=0.1)``."""
    return _make(NOISE_KINDS, "noise kind", name, kwargs)


@register_noise("gaussian")
@dataclass
class GaussianNoise(NoiseKind):
    """δ ~ N(0, σ²) elementwise."""

    def draw(self, flat: torch.Tensor, generator: torch.Generator) -> None:
        flat.normal_(generator=generator)


@register_noise("uniform")
@dataclass
class UniformNoise(NoiseKind):
    """δ ~ U(−σ√3, σ√3): the same standard deviation σ as the gaussian kind."""

    def draw(self, flat: torch.Tensor, generator: torch.Generator) -> None:
        bound = math.sqrt(3.0)
        flat.uniform_(-bound, bound, generator=generator)


@register_noise("laplace")
@dataclass
class LaplaceNoise(NoiseKind):
    """δ ~ Laplace(0, σ/√2): standard deviation σ, heavier tails than gaussian."""

    _scratch: dict[tuple, torch.Tensor] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def draw(self, flat: torch.Tensor, generator: torch.Generator) -> None:
        key = (flat.device, flat.dtype, flat.numel())  # one per buffer size, made once
        other = self._scratch.get(key)
        if other is None:
            other = self._scratch[key] = torch.empty_like(flat)
        other.exponential_(generator=generator)
        flat.exponential_(generator=generator).sub_(other)  # Exp(1) - Exp(1): Laplace
        flat.mul_(1.0 / math.sqrt(2.0))


@register_noise("dropnoise")
@dataclass
class DropNoise(NoiseKind):
    """Dropout on the gradient: δ = g · (m / (1 − p) − 1), m ~ Bernoulli(1 − p).

    At σ = 1, g + δ = g · m / (1 − p), the textbook form; σ scales δ.
    """

    p: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.p < 1.0:
            raise ValueError(f"dropnoise p must be in [0, 1), got {self.p}")

    def draw(self, flat: torch.Tensor, generator: torch.Generator) -> None:
        keep = 1.0 - self.p
        flat.bernoulli_(keep, generator=generator)
        flat.mul_(1.0 / keep).sub_(1.0)

    def shape(self, batch: NoiseBatch) -> None:
        torch._foreach_mul_(batch.views, batch.grads)


@register_noise("gradient_scaled")
@dataclass
class GradientScaledNoise(NoiseKind):
    """δ = α · g · ε, ε ~ N(0, 1) elementwise, α = σ."""

    def draw(self, flat: torch.Tensor, generator: torch.Generator) -> None:
        flat.normal_(generator=generator)

    def shape(self, batch: NoiseBatch) -> None:
        torch._foreach_mul_(batch.views, batch.grads)


@register_noise("orthogonal")
@dataclass
class OrthogonalNoise(NoiseKind):
    """δ = σ (ε − ⟨ε, g⟩ g / ‖g‖²) per tensor: gaussian noise minus its part along g."""

    def draw(self, flat: torch.Tensor, generator: torch.Generator) -> None:
        flat.normal_(generator=generator)

    def shape(self, batch: NoiseBatch) -> None:
        for eps, grad in zip(batch.views, batch.grads):
            g = grad.reshape(-1)
            squared = torch.dot(g, g).clamp_min(torch.finfo(g.dtype).tiny)
            eps.sub_(grad * (torch.dot(eps.reshape(-1), g) / squared))


@register_noise("regularization")
@dataclass
class RegularizationNoise(NoiseKind):
    """δ = λ ∂R/∂θ with λ = σ: R = ½‖θ‖² (``"l2"``, δ = λθ) or ‖θ‖₁ (``"l1"``)."""

    penalty: str = "l2"

    def __post_init__(self) -> None:
        if self.penalty not in ("l1", "l2"):
            raise ValueError(
                f"regularization penalty must be l1 or l2, got {self.penalty!r}"
            )

    def __call__(self, batch: NoiseBatch) -> None:
        if self.penalty == "l2":
            torch._foreach_copy_(batch.views, batch.params)
        else:
            for view, param in zip(batch.views, batch.params):
                torch.sign(param, out=view)


class Schedule:
    """A factor for σ at step t; add one with a subclass and ``@register_schedule``.

    ``__call__(step)`` returns the factor, ``step`` counting the optimizer steps
    taken so far (0 for the first). A schedule with ``needs_grad_norm`` gets the
    global gradient norm through ``observe`` before each step; state besides
    the step goes through ``state_dict`` / ``load_state_dict``.
    """

    name: ClassVar[str] = ""
    needs_grad_norm: ClassVar[bool] = False

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def observe(self, grad_norm: float) -> None:
        """Called once per step with the gradient norm when ``needs_grad_norm``."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


SCHEDULES: dict[str, type[Schedule]] = {}
register_schedule = _registrar(SCHEDULES)


def make_schedule(name: str, **kwargs: Any) -> Schedule:
    """A registered schedule by name: ``make_schedule("cosine", total_steps=500)``."""
    return _make(SCHEDULES, "schedule", name, kwargs)


def _check_steps(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


@register_schedule("constant")
@dataclass
class ConstantSchedule(Schedule):
    """factor 1."""

    def __call__(self, step: int) -> float:
        return 1.0


@register_schedule("exponential")
@dataclass
class ExponentialSchedule(Schedule):
    """factor γ^t."""

    gamma: float = 0.999

    def __call__(self, step: int) -> float:
        return self.gamma**step


@register_schedule("step")
@dataclass
class StepSchedule(Schedule):
    """factor γ^⌊t / step_size⌋."""

    step_size: int = 1000
    gamma: float = 0.5

    def __post_init__(self) -> None:
        _check_steps("step schedule step_size", self.step_size)

    def __call__(self, step: int) -> float:
        return self.gamma ** (step // self.step_size)


@register_schedule("cosine")
@dataclass
class CosineSchedule(Schedule):
    """factor m + (1 − m) · ½ (1 + cos(π · min(t, T) / T)); T, m: the fields."""

    total_steps: int = 10_000
    min_factor: float = 0.0

    def __post_init__(self) -> None:
        _check_steps("cosine schedule total_steps", self.total_steps)

    def __call__(self, step: int) -> float:
        cosine = math.cos(math.pi * min(step, self.total_steps) / self.total_steps)
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + cosine)


@register_schedule("warmup")
@dataclass
class WarmupSchedule(Schedule):
    """factor min(1, (t + 1) / warmup_steps) · then(t): linear warm-up, composable."""

    warmup_steps: int = 100
    then: Schedule = field(default_factory=ConstantSchedule)

    def __post_init__(self) -> None:
        _check_steps("warmup schedule warmup_steps", self.warmup_steps)

    @property
    def needs_grad_norm(self) -> bool:  # type: ignore[override]
        return self.then.needs_grad_norm

    def __call__(self, step: int) -> float:
        return min(1.0, (step + 1) / self.warmup_steps) * self.then(step)

    def observe(self, grad_norm: float) -> None:
        self.then.observe(grad_norm)

    def state_dict(self) -> dict[str, Any]:
        return self.then.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.then.load_state_dict(state)


@register_schedule("annealed")
@dataclass
class AnnealedSchedule(Schedule):
    """factor (1 + t)^(−γ/2): with sigma = √η, σ_t² = η / (1 + t)^γ.

    Neelakantan et al. (2015) use γ = 0.55 and η ∈ {0.01, 0.3, 1.0}, that is
    ``sigma=math.sqrt(eta)`` with this schedule.
    """

    gamma: float = 0.55

    def __call__(self, step: int) -> float:
        return (1 + step) ** (-self.gamma / 2)


@register_schedule("adaptive")
@dataclass
class AdaptiveSchedule(Schedule):
    """factor max(min_factor, m_t / peak): the noise shrinks as the gradients do.

    m_t is an exponential moving average (``beta``) of the global gradient norm
    and ``peak`` the largest m_t so far, so the factor never exceeds 1.
    """

    needs_grad_norm: ClassVar[bool] = True
    beta: float = 0.9
    min_factor: float = 0.0
    average: float | None = field(default=None, init=False)
    peak: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta < 1.0:
            raise ValueError(
                f"adaptive schedule beta must be in [0, 1), got {self.beta}"
            )

    def observe(self, grad_norm: float) -> None:
        if not math.isfinite(grad_norm):
            return
        if self.average is None:
            self.average = grad_norm
        else:
            self.average = self.beta * self.average + (1 - self.beta) * grad_norm
        self.peak = max(self.peak, self.average)

    def __call__(self, step: int) -> float:
        if self.average is None or self.peak == 0.0:
            return 1.0
        return max(self.min_factor, self.average / self.peak)

    def state_dict(self) -> dict[str, Any]:
        return {"average": self.average, "peak": self.peak}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average, self.peak = state["average"], state["peak"]


@dataclass
class _Bucket:
    """The parameters of one group on one device with one dtype, and their buffers.

    ``flat`` holds this step's unit noise and ``views`` its per-parameter slices:
    the bucket's own buffer, or a slot of ``ring`` when noise is drawn ahead.
    """

    group_index: int
    params: list[torch.Tensor]
    generator: torch.Generator
    scales: dict[int, torch.Tensor]  # position in params -> σ multiplier
    flat: torch.Tensor | None = None
    views: list[torch.Tensor] = field(default_factory=list)
    own: tuple[torch.Tensor, list[torch.Tensor]] | None = None  # allocated once
    ring: torch.Tensor | None = None  # (slots, numel): noise drawn ahead
    ring_slots: list[tuple[torch.Tensor, list[torch.Tensor]]] = field(
        default_factory=list
    )
    finite_flags: tuple[torch.Tensor, torch.Tensor] | None = None  # see _all_finite

    @property
    def on_cpu(self) -> bool:
        return self.generator.device.type == "cpu"

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)

    def live(self) -> tuple[list[int] | None, list[torch.Tensor]]:
        """Positions (None: all) and gradients of the parameters that have one."""
        grads = [p.grad for p in self.params]
        if not any([g is None for g in grads]):
            return None, grads
        positions = [i for i, g in enumerate(grads) if g is not None]
        return positions, [grads[i] for i in positions]

    def use_own(self) -> torch.Tensor:
        """Make the bucket's own buffer this step's; returns it."""
        if self.own is None:
            flat = self.params[0].new_empty(self.numel)
            self.own = flat, self._views(flat)
        self.flat, self.views = self.own
        return self.flat

    def slots(self, count: int) -> torch.Tensor:
        """The ring of ``count`` noise buffers, allocated once per count."""
        if self.ring is None or len(self.ring) != count:
            # rows padded to 64 bytes: each buffer aligned as the bucket's own one,
            # so kernels whose rounding depends on alignment give the same bits
            per = max(1, 64 // self.params[0].element_size())
            numel, row = self.numel, -(-self.numel // per) * per
            self.ring = self.params[0].new_empty(count, row)
            self.ring_slots = [(r[:numel], self._views(r[:numel])) for r in self.ring]
        return self.ring

    def use_slot(self, slot: int) -> None:
        self.flat, self.views = self.ring_slots[slot]

    def batch(
        self, positions: list[int] | None, grads: list[torch.Tensor]
    ) -> NoiseBatch:
        assert self.flat is not None
        views, params = self.views, self.params
        if positions is not None:
            views = [views[i] for i in positions]
            params = [params[i] for i in positions]
        return NoiseBatch(self.flat, views, grads, params, self.generator)

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        sizes = [p.numel() for p in self.params]
        return [v.view_as(p) for v, p in zip(flat.split(sizes), self.params)]


PREFETCH_ELEMENTS = 1 << 20  # numbers drawn per side-thread wake-up, at least
PREFETCH_MAX_STEPS = 128


@dataclass
class _Chunk:
    """Unit noise for ``steps`` consecutive noisy steps of ``buckets``, in slots
    ``first .. first + steps`` of their rings; ``states[j]`` holds the generators'
    states from before step j's draws (and, last, from after the chunk)."""

    noise: NoiseKind
    buckets: tuple[_Bucket, ...]
    first: int
    steps: int
    generators: list[torch.Generator]
    states: list[list[torch.Tensor]] = field(default_factory=list)
    done: Future | None = None
    used: int = 0

    def matches(self, noise: NoiseKind, buckets: list[_Bucket]) -> bool:
        return (
            noise is self.noise
            and len(buckets) == len(self.buckets)
            and all(a is b for a, b in zip(buckets, self.buckets))
        )

    @torch.no_grad()
    def fill(self) -> None:
        """Draw every step's noise, exactly as the in-line draws would (runs aside)."""
        for j in range(self.steps):
            self.states.append([g.get_state() for g in self.generators])
            for bucket in self.buckets:
                self.noise.draw(bucket.ring_slots[self.first + j][0], bucket.generator)
        self.states.append([g.get_state() for g in self.generators])


class _Prefetcher:
    """Draws unit noise ahead on the side thread. Each bucket gets a ring of two
    halves of ``steps`` buffers: the side thread fills one half while the steps
    use the other, so it wakes once per ``steps`` steps (a wake-up costs up to
    ~150 µs on a small VM) and draws at least ``PREFETCH_ELEMENTS`` numbers each time.
    """

    def __init__(self) -> None:
        self.current: _Chunk | None = None  # being used, drawn (or being drawn)
        self.next: _Chunk | None = None  # being drawn into the other half

    def take(self, noise: NoiseKind, buckets: list[_Bucket]) -> bool:
        """Point each bucket's ``flat`` at this step's unit noise, drawn ahead; False
        (and nothing drawn ahead any more) when it was drawn for other buckets or
        not at all: draw this step in line, then call ``start``."""
        chunk = self.current
        if chunk is None or not chunk.matches(noise, buckets):
            self.cancel()
            return False
        assert chunk.done is not None
        chunk.done.result()  # drawn during the last steps; raises what it raised
        for bucket in buckets:
            bucket.use_slot(chunk.first + chunk.used)
        chunk.used += 1
        if self.next is None:  # the other half is free: fill it now
            other = chunk.steps - chunk.first
            self.next = self._start(noise, chunk.buckets, other, chunk.steps)
        if chunk.used == chunk.steps:
            self.current, self.next = self.next, None
        return True

    def start(self, noise: NoiseKind, buckets: list[_Bucket]) -> None:
        """Start drawing the next steps' noise for ``buckets``, where the generators are."""
        elements = sum(bucket.numel for bucket in buckets)
        steps = min(PREFETCH_MAX_STEPS, max(1, -(-PREFETCH_ELEMENTS // elements)))
        self.current = self._start(noise, tuple(buckets), 0, steps)

    def cancel(self) -> None:
        """Drop what was drawn ahead and rewind the generators to the first unused
        draw, as if it had never been drawn."""
        chunks = [c for c in (self.current, self.next) if c is not None]
        self.current = self.next = None
        for chunk in chunks:
            assert chunk.done is not None
            chunk.done.result()
        if chunks:
            first = chunks[0]
            for generator, state in zip(first.generators, first.states[first.used]):
                generator.set_state(state)

    @staticmethod
    def _start(
        noise: NoiseKind, buckets: tuple[_Bucket, ...], first: int, steps: int
    ) -> _Chunk:
        for bucket in buckets:
            bucket.slots(2 * steps)
        generators = list({id(b.generator): b.generator for b in buckets}.values())
        chunk = _Chunk(noise, buckets, first, steps, generators)
        chunk.done = _side_thread().submit(chunk.fill)
        return chunk


_SIDE: list[ThreadPoolExecutor] = []  # one side thread per process, made when needed
if hasattr(os, "register_at_fork"):  # a forked child starts without the parent's thread
    os.register_at_fork(after_in_child=_SIDE.clear)


def _side_thread() -> ThreadPoolExecutor:
    if not _SIDE:
        _SIDE.append(ThreadPoolExecutor(1, thread_name_prefix="noise-prefetch"))
    return _SIDE[0]


def _cores() -> int:
    """CPU cores this process may run on (asked once)."""
    if not _CORES:
        try:
            _CORES.append(len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            _CORES.append(os.cpu_count() or 1)
    return _CORES[0]


_CORES: list[int] = []


@dataclass
class _Divergence:
    """Flags a loss or gradient norm that is non-finite or exploded: above both
    its first value and ``factor`` times its best (loss) or running mean (norm)."""

    loss_factor: float
    grad_factor: float | None
    first_loss: float | None = None
    best_loss: float = math.inf
    first_norm: float | None = None
    mean_norm: float = 0.0
    reason: str | None = None

    def observe_loss(self, loss: float) -> None:
        if not math.isfinite(loss):
            self._flag(f"loss is {loss}")
            return
        self.first_loss = loss if self.first_loss is None else self.first_loss
        if loss > max(self.loss_factor * self.best_loss, self.first_loss):
            self._flag(f"loss {loss:.4g} > {self.loss_factor}x its best")
        self.best_loss = min(self.best_loss, loss)

    def observe_grad_norm(self, norm: float) -> None:
        self.first_norm = norm if self.first_norm is None else self.first_norm
        if norm > max(self.grad_factor * self.mean_norm, self.first_norm) > 0:
            self._flag(f"gradient norm {norm:.4g} > {self.grad_factor}x its mean")
        self.mean_norm = 0.9 * (self.mean_norm or norm) + 0.1 * norm

    def _flag(self, reason: str) -> None:
        self.reason = self.reason or reason


def _device_seed(seed: int, position: int, rank: int) -> int:
    """``seed`` for the first device the optimizer's parameters are on (``position``
    0) at rank 0, offset by large odd numbers for the others."""
    offset = 0x9E3779B97F4A7C15 * rank + 0xBF58476D1CE4E5B9 * position
    return (seed + offset) % 2**63


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _check_number(name: str, value: float | None, allow_zero: bool = False) -> None:
    positive = value is not None and (value > 0 or (allow_zero and value == 0))
    if value is not None and not (positive and math.isfinite(value)):
        raise ValueError(f"{name} must be {'>=' if allow_zero else '>'} 0, got {value}")


class PerturbedOptimizer(torch.optim.Optimizer):
    """Adds δ_t to each gradient, then lets ``base`` (any torch.optim optimizer) step.

    Use it as the optimizer it wraps: ``step(closure=None)``, ``zero_grad()``,
    ``param_groups``, ``state_dict()``, LR schedulers (step hooks: on ``base``).
    A step, in order (Neelakantan et al.'s rule: noise on the final unscaled
    gradient, after clipping, before the learning rate):

    1. a non-finite gradient skips the step (counted in ``skipped_steps``);
    2. clip the gradient norm to ``clip_norm``, over all parameters or per group
       (``clip_per_group``), exactly as ``torch.nn.utils.clip_grad_norm_``;
    3. δ = σ_t · (group ``noise_scale``) · (``set_unit_scale``) · unit draw, with
       σ_t = sigma · schedule(t) and ‖δ‖ ≤ max_noise_ratio · ‖g‖ per tensor;
    4. g ← g + δ, then ``base.step()``.

    Call ``step`` once after accumulating micro-batch gradients. With
    ``torch.amp.GradScaler`` call ``scaler.step(opt)`` (after ``scaler.unscale_(opt)``
    if you like): the scaler unscales before it calls ``step``, so noise lands
    on unscaled gradients. ``sigma`` is the standard deviation of δ for the
    gaussian, uniform, laplace and orthogonal kinds and a multiplier for the
    others (σ = 1: their textbook form). ``sigma=0`` or ``noise=None`` is
    bit-identical to ``base`` alone.

    Noise comes from a seeded ``torch.Generator`` per device, and ``state_dict``
    keeps their states and the step: same seed, same run; a resumed run
    continues exactly. Under torch.distributed (DDP) ``step`` runs after the
    all-reduce, when every rank holds the same averaged gradient, so every rank
    draws the same noise and the replicas stay identical: one draw of std σ has
    the statistics of N independent per-rank draws of std σ√N averaged by the
    all-reduce. ``independent_ranks=True`` offsets the seed by the rank, for
    ranks that train models of their own.

    Cost per bucket (group x device x dtype): one generator call into a buffer
    allocated once, one fused add, and the guard: one fused non-finite check
    and one host sync; when clipping, max_noise_ratio, an adaptive schedule or
    ``grad_explosion_factor`` is on, a norm pass instead of the check.
    With ``prefetch`` the generator call leaves the step: a side thread draws
    the next steps' unit noise for the CPU buckets, into a ring of buffers,
    while forward and backward run. The draws come from the same
    generators in the same order (rewound if the next step needs other
    buckets), so a run is identical with or without it. ``prefetch=None``
    turns it on when torch leaves a core free (``torch.get_num_threads()``
    below the cores this process may use). CUDA draws are asynchronous anyway.
    ``observe_loss(loss)`` and ``diverged`` are a divergence signal for the loop.
    """

    def __init__(
        self,
        base: torch.optim.Optimizer,
        noise: str | NoiseKind | None = "gaussian",
        sigma: float = 0.01,
        schedule: str | Schedule | None = None,
        seed: int = 0,
        *,
        clip_norm: float | None = None,
        clip_per_group: bool = False,
        max_noise_ratio: float | None = None,
        skip_nonfinite: bool = True,
        loss_explosion_factor: float = 10.0,
        grad_explosion_factor: float | None = None,
        param_names: Iterable[tuple[str, torch.Tensor]] | None = None,
        independent_ranks: bool = False,
        prefetch: bool | None = None,
    ) -> None:
        if not isinstance(base, torch.optim.Optimizer):
            raise TypeError(f"base must be a torch.optim.Optimizer, got {type(base)}")
        _check_number("sigma", sigma, allow_zero=True)
        _check_number("clip_norm", clip_norm)
        _check_number("max_noise_ratio", max_noise_ratio)
        _check_number("grad_explosion_factor", grad_explosion_factor)
        self.base = base
        self.noise = make_noise(noise) if isinstance(noise, str) else noise
        self.sigma = float(sigma)
        if isinstance(schedule, str):
            schedule = make_schedule(schedule)
        self.schedule = schedule if schedule is not None else ConstantSchedule()
        self.seed = seed
        self.clip_norm = clip_norm
        self.clip_per_group = clip_per_group
        self.max_noise_ratio = max_noise_ratio
        self.skip_nonfinite = skip_nonfinite
        self.skipped_steps = 0
        self._step = 0
        self._divergence = _Divergence(loss_explosion_factor, grad_explosion_factor)
        self._names = {id(p): name for name, p in param_names or ()}
        self._rank = _rank() if independent_ranks else 0
        self._generators: dict[str, torch.Generator] = {}
        # (group index, index in group) -> unit scale, shaped to broadcast over dim 0
        self._scales: dict[tuple[int, int], torch.Tensor] = {}
        self._buckets: list[_Bucket] | None = None
        self.prefetch = prefetch
        self._ahead = _Prefetcher()

    # -- what torch.optim.Optimizer offers, delegated to ``base`` -------------

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.base.param_groups

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.base.state

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.base.defaults

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.base.add_param_group(param_group)
        self._reset_buckets()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore
        """Evaluate ``closure`` if given, perturb the gradients, then step ``base``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.perturb_grads():
            self.base.step()
            self._step += 1
        return loss

    def state_dict(self) -> dict[str, Any]:
        self._get_buckets()  # makes every device's generator
        self._ahead.cancel()  # the generators as of the draws used so far
        perturb = {
            "step": self._step,
            "skipped_steps": self.skipped_steps,
            "generators": {key: g.get_state() for key, g in self._generators.items()},
            "schedule": self.schedule.state_dict(),
            "divergence": vars(self._divergence).copy(),
            "scales": dict(self._scales),
        }
        return {"base": self.base.state_dict(), "perturb": perturb}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base.load_state_dict(state_dict["base"])
        perturb = state_dict["perturb"]
        self._step = perturb["step"]
        self.skipped_steps = perturb["skipped_steps"]
        self._scales = dict(perturb["scales"])
        self._reset_buckets()
        self._get_buckets()  # makes the generators whose states come next
        for key, generator_state in perturb["generators"].items():
            if key not in self._generators:
                raise ValueError(
                    f"the state has a noise generator for {key}, but no parameter is "
                    f"there (devices: {', '.join(self._generators)}); resume on {key}"
                )
            self._generators[key].set_state(generator_state.cpu())
        self.schedule.load_state_dict(perturb["schedule"])
        vars(self._divergence).update(perturb["divergence"])

    # -- perturbation ---------------------------------------------------------

    @property
    def diverged(self) -> bool:
        """True once the loss or the gradient norm went non-finite or exploded."""
        return self._divergence.reason is not None

    @property
    def divergence_reason(self) -> str | None:
        return self._divergence.reason

    def observe_loss(self, loss: float | torch.Tensor) -> bool:
        """Feed a loss to the divergence signal; returns ``diverged``.

        A loss diverged when non-finite, or above both ``loss_explosion_factor``
        times the best loss and the first loss seen. With ``grad_explosion_factor``
        set, the gradient norm (seen in ``step``) likewise against that factor
        times its mean; it is off by default because it costs a norm pass over
        every gradient each step (unless clipping already takes one).
        """
        value = loss.detach() if isinstance(loss, torch.Tensor) else loss
        self._divergence.observe_loss(float(value))
        return self.diverged

    def current_sigma(self) -> float:
        """σ_t for the next step, before group and unit scales."""
        return self.sigma * self.schedule(self._step)

    def set_unit_scale(
        self,
        param: torch.Tensor | str,
        scale: float | Sequence[float] | torch.Tensor | None,
    ) -> None:
        """Multiply σ for one parameter: by one number, or by one per output unit.

        Per-unit scales have shape (param.shape[0],) and broadcast over dim 0: a
        Linear weight (out, in), its bias (out,) and a conv weight
        (out, in, kh, kw) all take shape (out,). ``param`` is the tensor, or its
        name when ``param_names`` was given; ``scale=None`` removes the scale.
        """
        key = self._locate(param)
        self._reset_buckets()
        if scale is None:
            self._scales.pop(key, None)
            return
        tensor = self.param_groups[key[0]]["params"][key[1]]
        values = torch.as_tensor(scale).detach().to(tensor.device, tensor.dtype)
        units = tuple(tensor.shape[:1])
        if values.dim() > 0 and tuple(values.shape) != units:
            raise ValueError(
                f"unit scale for {self._describe(key)} has shape "
                f"{tuple(values.shape)}; expected one number or shape {units}, "
                "one value per output unit"
            )
        if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
            raise ValueError(
                f"unit scale for {self._describe(key)} must be finite, >= 0"
            )
        if values.dim() > 0:
            values = values.reshape(units + (1,) * (tensor.dim() - 1))
        self._scales[key] = values

    def perturb_grads(self) -> bool:
        """Steps 1-3 on the ``.grad`` tensors, in place; False: skip this step."""
        with torch.no_grad():
            return self._perturb_grads()

    def _perturb_grads(self) -> bool:
        live = [(bucket, *bucket.live()) for bucket in self._get_buckets()]
        live = [entry for entry in live if entry[2]]
        if not live:
            return True
        grad_norms: list[torch.Tensor | None] = [None] * len(live)
        if self._needs_grad_norms():
            norms = self._guard_and_clip(live)
            if norms is None:
                return False
            grad_norms = list(norms)
        elif self.skip_nonfinite and not self._all_finite(live):
            self.skipped_steps += 1
            return False
        sigma = self.current_sigma()
        if self.noise is None or sigma == 0.0:
            return True
        work = [
            (bucket, positions, grads, norms, alpha)
            for (bucket, positions, grads), norms in zip(live, grad_norms)
            if (alpha := sigma * self._group_scale(bucket.group_index)) != 0.0
        ]
        noise = self.noise
        apart = noise.drawn_apart  # else the kind draws in __call__
        reshapes = apart and type(noise).shape is not NoiseKind.shape
        self._draw([entry[0] for entry in work], apart)
        for bucket, positions, grads, norms, alpha in work:
            views = bucket.views
            if positions is not None:
                views = [views[i] for i in positions]
            if not apart:
                noise(bucket.batch(positions, grads))
            elif reshapes:
                noise.shape(bucket.batch(positions, grads))
            self._add_noise(bucket, views, grads, alpha, norms)
        return True

    def _add_noise(
        self,
        bucket: _Bucket,
        views: list[torch.Tensor],
        grads: list[torch.Tensor],
        alpha: float,
        norms: torch.Tensor | None,
    ) -> None:
        """Scale the unit noise in ``views`` and add it to the gradients."""
        for position, scale in bucket.scales.items():
            bucket.views[position].mul_(scale)
        if self.max_noise_ratio is not None and norms is not None:
            noise_norms = torch.stack(torch._foreach_norm(views)) * alpha
            bound = self.max_noise_ratio * norms / noise_norms.clamp_min(1e-30)
            torch._foreach_mul_(views, list(bound.clamp(max=1.0).unbind()))
        try:
            torch._foreach_add_(grads, views, alpha=alpha)
        except RuntimeError:
            sparse = [g for g in grads if g.is_sparse]
            if not sparse:
                raise
            param = next(p for p in bucket.params if p.grad is sparse[0])
            key = self._locate(param)
            raise ValueError(
                f"{self._describe(key)} has a sparse gradient, and noise would make it "
                "dense; use nn.Embedding(sparse=False), or put it in a param group "
                "with noise_scale 0"
            ) from None

    def _guard_and_clip(
        self, live: list[tuple[_Bucket, Any, Any]]
    ) -> list[torch.Tensor] | None:
        """Per-tensor gradient norms of each bucket after clipping; None: skip."""
        grads = [bucket_grads for _, _, bucket_grads in live]
        norms = [
            torch.stack(torch._foreach_norm(bucket_grads)) for bucket_grads in grads
        ]
        device = norms[0].device
        total = torch.linalg.vector_norm(_cat([n.to(device) for n in norms]))
        total_value = float(total)  # the one host sync per step
        if not math.isfinite(total_value):
            if self.skip_nonfinite:
                self.skipped_steps += 1
                return None
        elif self._divergence.grad_factor is not None:
            self._divergence.observe_grad_norm(total_value)
        if self.schedule.needs_grad_norm:
            self.schedule.observe(total_value)
        if self.clip_norm is None:
            return norms
        clip_sets: dict[int, list[int]] = {}  # all buckets together, or per group
        for position, (bucket, _, _) in enumerate(live):
            key = bucket.group_index if self.clip_per_group else 0
            clip_sets.setdefault(key, []).append(position)
        for members in clip_sets.values():
            if self.clip_per_group:
                total = torch.linalg.vector_norm(
                    _cat([norms[i].to(device) for i in members])
                )
            coef = torch.clamp(self.clip_norm / (total + 1e-6), max=1.0)
            for i in members:  # as torch.nn.utils.clip_grad_norm_, bit for bit
                local = coef.to(norms[i].device)
                torch._foreach_mul_(grads[i], local)
                norms[i] = norms[i] * local
        return norms

    def _all_finite(self, live: list[tuple[_Bucket, Any, Any]]) -> bool:
        """No inf or NaN in any gradient: one fused check per bucket, one host sync
        (the check GradScaler uses; multiplying by 1 leaves the gradients as they are).
        """
        flags = []
        for bucket, _, grads in live:
            if bucket.finite_flags is None:  # (found, one), made once, found kept at 0
                device = grads[0].device
                bucket.finite_flags = torch.zeros((), device=device), torch.ones((), device=device)  # fmt: skip
            flag, one = bucket.finite_flags
            try:
                torch._amp_foreach_non_finite_check_and_unscale_(grads, flag, one)
            except NotImplementedError:  # sparse gradients: check their values
                finite = all(bool(torch.isfinite(_values(g)).all()) for g in grads)
                flag.fill_(0.0 if finite else 1.0)
            flags.append(flag)
        if not any([bool(flag) for flag in flags]):
            return True
        for flag in flags:
            flag.zero_()
        return False

    def _needs_grad_norms(self) -> bool:
        return bool(
            self._divergence.grad_factor is not None
            or self.clip_norm is not None
            or self.max_noise_ratio is not None
            or self.schedule.needs_grad_norm
        )

    def _group_scale(self, group_index: int) -> float:
        scale = self.param_groups[group_index].get("noise_scale", 1.0)
        if scale == 1.0:
            return 1.0
        scale = float(scale)
        if not (math.isfinite(scale) and scale >= 0):
            raise ValueError(
                f"param_groups[{group_index}]['noise_scale'] must be >= 0, got {scale}"
            )
        return scale

    # -- drawing, in line or ahead on the side thread ------------------------------

    def _draw(self, buckets: list[_Bucket], apart: bool) -> None:
        """Unit noise into each bucket's ``flat``, in order: drawn ahead, or now
        (``apart`` False: only the buffer, the kind draws when called)."""
        ahead = apart and self._prefetching(buckets)
        if ahead and self._ahead.take(self.noise, buckets):
            return
        self._ahead.cancel()
        for bucket in buckets:
            flat = bucket.use_own()
            if apart:
                self.noise.draw(flat, bucket.generator)
        if ahead:  # the next steps' noise, from where this step's draws left off
            self._ahead.start(self.noise, buckets)

    def _prefetching(self, buckets: list[_Bucket]) -> bool:
        if not all(bucket.on_cpu for bucket in buckets):
            return False  # CUDA draws are asynchronous already
        if self.prefetch is None:
            return torch.get_num_threads() < _cores()
        return self.prefetch

    # -- bookkeeping ------------------------------------------------------------

    def _reset_buckets(self) -> None:
        self._ahead.cancel()
        self._buckets = None

    def _get_buckets(self) -> list[_Bucket]:
        """Per group, one bucket per (device, dtype) of its parameters, made once."""
        if self._buckets is not None:
            return self._buckets
        self._buckets = []
        for group_index, group in enumerate(self.param_groups):
            positions: dict[tuple[torch.device, torch.dtype], list[int]] = {}
            for index, param in enumerate(group["params"]):
                positions.setdefault((param.device, param.dtype), []).append(index)
            for (device, _), indices in positions.items():
                keys = [(group_index, index) for index in indices]
                scales = {
                    i: self._scales[k] for i, k in enumerate(keys) if k in self._scales
                }
                params = [group["params"][index] for index in indices]
                generator = self._generator(device)
                self._buckets.append(_Bucket(group_index, params, generator, scales))
        return self._buckets

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            generator = torch.Generator(device=device)
            position = len(self._generators)  # devices in order of first use
            generator.manual_seed(_device_seed(self.seed, position, self._rank))
            self._generators[key] = generator
        return self._generators[key]

    def _locate(self, param: torch.Tensor | str) -> tuple[int, int]:
        """(group index, index in group) of a parameter, given as a tensor or a name."""
        target = id(param)
        if isinstance(param, str):
            ids = [pid for pid, name in self._names.items() if name == param]
            if not ids:
                raise ValueError(
                    f"no parameter named {param!r}; "
                    "pass param_names=model.named_parameters() to the optimizer"
                )
            target = ids[0]
        for group_index, group in enumerate(self.param_groups):
            for index, candidate in enumerate(group["params"]):
                if id(candidate) == target:
                    return group_index, index
        raise ValueError(f"parameter {param!r} is not one this optimizer updates")

    def _describe(self, key: tuple[int, int]) -> str:
        tensor = self.param_groups[key[0]]["params"][key[1]]
        name = self._names.get(
            id(tensor), f"param_groups[{key[0]}]['params'][{key[1]}]"
        )
        return f"parameter {name} of shape {tuple(tensor.shape)}"


def _values(grad: torch.Tensor) -> torch.Tensor:
    return grad.coalesce().values() if grad.is_sparse else grad


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def make_optimizer(model, lr):
    """The base optimizer, wrapped so each step adds gradient noise (SIGMA = 0: none)."""
    params = model.parameters()
    base = {
        "sgd": lambda: torch.optim.SGD(params, lr=lr, weight_decay=WEIGHT_DECAY),
        "momentum": lambda: torch.optim.SGD(
            params, lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
        ),
        "adam": lambda: torch.optim.Adam(params, lr=lr, weight_decay=WEIGHT_DECAY),
        "adamw": lambda: torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY),
        "rmsprop": lambda: torch.optim.RMSprop(
            params, lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
        ),
    }[OPTIMIZER]()
    optimizer = PerturbedOptimizer(
        base,
        noise=NOISE,
        sigma=SIGMA,
        schedule=NOISE_SCHEDULE,
        seed=SEED,
        clip_norm=GRAD_CLIP or None,  # clipping comes first, noise after it
    )
    return optimizer


def make_scheduler(optimizer, steps_per_epoch):
    """The learning-rate schedule (stepped once per epoch, cyclic once per batch)."""
    schedulers = torch.optim.lr_scheduler
    return {
        "none": lambda: None,
        "step": lambda: schedulers.StepLR(optimizer, step_size=STEP_SIZE, gamma=GAMMA),
        "exponential": lambda: schedulers.ExponentialLR(optimizer, gamma=GAMMA),
        "cosine": lambda: schedulers.CosineAnnealingLR(optimizer, T_max=EPOCHS),
        "cyclic": lambda: schedulers.CyclicLR(
            optimizer,
            base_lr=LR / 10,
            max_lr=LR,
            step_size_up=2 * steps_per_epoch,
            mode="triangular",
            cycle_momentum=False,
        ),
        "warmup": lambda: schedulers.LinearLR(
            optimizer, start_factor=1 / (WARMUP_EPOCHS + 1), total_iters=WARMUP_EPOCHS
        ),
    }[SCHEDULER]()


# -----------------------------------------------------------------------------
# loss and accuracy: override this include to train another kind of model


def loss_fn(output, target):
    """The mean loss of a batch."""
    if TASK == "regression":
        return F.mse_loss(output.reshape(target.shape), target.float())
    return F.cross_entropy(output, target)


def penalty(model):
    """The L1 term added to the loss (L2 is the optimizer's WEIGHT_DECAY)."""
    if not L1:
        return 0.0
    return L1 * sum(p.abs().sum() for p in model.parameters())


def correct(output, target):
    """(right, counted): predictions that match their labels, out of how many."""
    if TASK != "classification":
        return 0, len(target)
    return (output.argmax(dim=1) == target).sum().item(), len(target)


# -----------------------------------------------------------------------------
# training loop


def train_one_epoch(model, optimizer, scheduler, x, y, batch_size, generator):
    """One pass over the training data in a seeded order: (mean loss, accuracy)."""
    model.train()
    order = torch.randperm(len(x), generator=generator).to(x.device)
    total_loss, right, counted = 0.0, 0, 0
    for start in range(0, len(x), batch_size):
        batch = order[start : start + batch_size]
        output = model(x[batch])
        loss = loss_fn(output, y[batch])
        optimizer.zero_grad(set_to_none=True)
        objective = loss + penalty(model)
        # no gradient at all when the ablation cut every weight off the loss
        if objective.requires_grad:
            objective.backward()
        optimizer.step()
        if SCHEDULER == "cyclic":
            scheduler.step()
        optimizer.observe_loss(loss.item())
        total_loss += loss.item() * len(batch)
        batch_right, batch_counted = correct(output, y[batch])
        right, counted = right + batch_right, counted + batch_counted
    return total_loss / len(x), right / counted


@torch.no_grad()
def evaluate(model, x, y, batch_size):
    """(mean loss, accuracy) on held-out data, in eval mode."""
    model.eval()
    total_loss, right, counted = 0.0, 0, 0
    for start in range(0, len(x), batch_size):
        output = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        total_loss += loss_fn(output, target).item() * len(output)
        batch_right, batch_counted = correct(output, target)
        right, counted = right + batch_right, counted + batch_counted
    return total_loss / len(x), right / counted


def train(args):
    """Train the (ablated) model; returns the metrics of the result JSON."""
    device = torch.device(args.device)
    x_train, y_train, x_val, y_val = (t.to(device) for t in load_data())
    model = new_model()
    params_total = sum(p.numel() for p in model.parameters())
    model = ablate(model).to(device)
    optimizer = make_optimizer(model, args.lr)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    scheduler = make_scheduler(optimizer, steps_per_epoch)
    generator = torch.Generator().manual_seed(args.seed)
    history, status, epochs_to_target = [], "ok", None
    best_val_loss, stale_epochs, train_time = math.inf, 0, 0.0
    for epoch in range(1, args.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        train_loss, train_acc = train_one_epoch(
            model, optimizer, scheduler, x_train, y_train, args.batch_size, generator
        )
        train_time += time.perf_counter() - start
        val_loss, val_acc = evaluate(model, x_val, y_val, args.batch_size)
        if scheduler is not None and SCHEDULER != "cyclic":
            scheduler.step()
        history.append(
            {
                "epoch": epoch,
                "lr": lr,
                "train_loss": train_loss,
                "train_acc": train_acc if TASK == "classification" else None,
                "val_loss": val_loss,
                "val_acc": val_acc if TASK == "classification" else None,
            }
        )
        print(
            f"epoch {epoch}/{args.epochs}: train loss {train_loss:.4f} "
            f"val loss {val_loss:.4f} val acc {val_acc:.4f}",
            flush=True,
        )
        finite = math.isfinite(train_loss) and math.isfinite(val_loss)
        if not finite or optimizer.diverged:
            status = "diverged"
            break
        reached = TASK == "classification" and val_acc >= TARGET_ACC
        if reached and epochs_to_target is None:
            epochs_to_target = epoch
            if STOP_AT_TARGET:
                break
        if val_loss < best_val_loss:
            best_val_loss, stale_epochs = val_loss, 0
        else:
            stale_epochs += 1
            if PATIENCE and stale_epochs >= PATIENCE:
                print(f"early stopping: no val-loss gain for {PATIENCE} epochs")
                break
    if args.checkpoint:
        save_atomic(args.checkpoint, lambda path: torch.save(model.state_dict(), path))
    samples = len(x_train) * len(history)
    return {
        "status": status,
        "history": history,
        "final": {k: v for k, v in history[-1].items() if k not in ("epoch", "lr")},
        "epochs_run": len(history),
        "epochs_to_target": epochs_to_target,
        "params_total": params_total,
        "params_effective": params_total - ABLATED_PARAMS,
        "model_bytes": sum(t.nbytes for t in model.state_dict().values()),
        "samples_per_s": samples / train_time if train_time else None,
        "skipped_steps": optimizer.skipped_steps,
        "peak_memory_bytes": peak_memory_bytes(device),
    }


# -----------------------------------------------------------------------------
# command line, determinism, result JSON
EXIT_CODES = {"ok": 0, "failed": 1, "diverged": 3}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--device", default=DEVICE, choices=["cpu", "cuda"])
    parser.add_argument("--out", default=None, help="write the JSON result here")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument(
        "--checkpoint", default=None, help="save the trained weights here"
    )
    return parser.parse_args(argv)


def seed_everything(seed, device):
    random.seed(seed)
    torch.manual_seed(seed)
    if device == "cpu":
        torch.use_deterministic_algorithms(True)


def peak_memory_bytes(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        import resource
    except ImportError:  # not on this platform
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def save_atomic(path, write):
    """Write via a temporary file and a rename: never a half-written file."""
    tmp = f"{path}.tmp{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


def jsonable(value):
    """NaN and infinities (a diverged run) become null: the result stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [jsonable(item) for item in value]
    return value


def main(argv=None):
    args = parse_args(argv)
    seed_everything(args.seed, args.device)
    started = time.perf_counter()
    result = {
        "schema": 1,
        "variant": VARIANT,
        "seed": args.seed,
        "epochs": args.epochs,
        "device": args.device,
        "error": None,
    }
    try:
        result.update(train(args))
    except Exception as exc:  # the run failed: say so in the result, exit 1
        traceback.print_exc()
        result.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    result["wall_time_s"] = time.perf_counter() - started
    if args.out:
        text = json.dumps(jsonable(result), indent=2, sort_keys=True)
        save_atomic(args.out, lambda path: Path(path).write_text(text))
    print(f"{VARIANT}: {result['status']} in {result['wall_time_s']:.1f}s")
    return EXIT_CODES[result["status"]]


if __name__ == "__main__":
    sys.exit(main())
