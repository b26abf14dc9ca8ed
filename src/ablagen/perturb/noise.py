"""Noise kinds: what δ_t looks like, drawn at unit strength into a flat buffer."""

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .registry import _make, _registrar

# -- noise kinds: what δ_t looks like ------------------------------------------


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
