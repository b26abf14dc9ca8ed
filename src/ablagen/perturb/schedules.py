"""Schedules: σ_t = sigma · schedule(t)."""

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .registry import _make, _registrar

# -- schedules: σ_t = sigma · schedule(t) --------------------------------------


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
