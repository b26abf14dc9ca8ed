"""The perturbation-aware optimizer: θ_{t+1} = θ_t − η (∇L(θ_t) + δ_t).

The library's full optimizer: every noise kind and schedule, buffers drawn ahead,
the divergence guard. Scripts that add noise carry a short, plain version of it
(``templates/noise.py.j2``: only their own kind and schedule), and
``tests/test_noise_block.py`` holds the two to the same noise, bit for bit.

- ``noise``: the noise kinds (a registry: ``register_noise``);
- ``schedules``: σ_t over the steps (a registry: ``register_schedule``);
- ``buffers``: the flat noise buffers and the side thread that fills them ahead;
- ``divergence``: the divergence signal (losses judged on their device, lazily);
- ``optimizer``: ``PerturbedOptimizer``, the wrapper around any torch.optim optimizer.
"""

from .noise import (
    NOISE_KINDS,
    DropNoise,
    GaussianNoise,
    GradientScaledNoise,
    LaplaceNoise,
    NoiseBatch,
    NoiseKind,
    OrthogonalNoise,
    RegularizationNoise,
    UniformNoise,
    make_noise,
    register_noise,
)
from .optimizer import PerturbedOptimizer
from .schedules import (
    SCHEDULES,
    AdaptiveSchedule,
    AnnealedSchedule,
    ConstantSchedule,
    CosineSchedule,
    ExponentialSchedule,
    Schedule,
    StepSchedule,
    WarmupSchedule,
    make_schedule,
    register_schedule,
)

__all__ = [
    "NOISE_KINDS",
    "SCHEDULES",
    "AdaptiveSchedule",
    "AnnealedSchedule",
    "ConstantSchedule",
    "CosineSchedule",
    "DropNoise",
    "ExponentialSchedule",
    "GaussianNoise",
    "GradientScaledNoise",
    "LaplaceNoise",
    "NoiseBatch",
    "NoiseKind",
    "OrthogonalNoise",
    "PerturbedOptimizer",
    "RegularizationNoise",
    "Schedule",
    "StepSchedule",
    "UniformNoise",
    "WarmupSchedule",
    "make_noise",
    "make_schedule",
    "register_noise",
    "register_schedule",
]
