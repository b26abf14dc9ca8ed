"""GPU placement for the local backend: which GPU each warm worker's runs see.

A worker is pinned to one GPU for its whole life: every run it forks gets
``CUDA_VISIBLE_DEVICES=<that GPU>``, so the script's ``cuda`` device is that GPU and
no other is visible to it. Workers are dealt out round-robin over ``--gpus``, and a
worker runs one run at a time, so with ``jobs <= len(gpus) * runs_per_gpu`` no GPU
ever holds more than ``--runs-per-gpu`` runs at once. ``--jobs`` defaults to that
product and is capped at it. With ``--device cuda`` and no ``--gpus``, every GPU
this process sees is used, one run each.

GPU indices are torch's numbering as the orchestrator sees it (0 ..
``torch.cuda.device_count() - 1``): under an outer ``CUDA_VISIBLE_DEVICES=2,3``,
``--gpus 1`` is physical GPU 3, and its workers get ``CUDA_VISIBLE_DEVICES=3``
(UUIDs and MIG names pass through as written). :func:`visible_gpus` is looked up at
call time, so tests replace it to fake a machine's GPUs.

:func:`check_devices` is every device check of a study's runs at once (fp16 mixed
precision needs CUDA; the GPUs asked for exist), so ``ablagen study`` and ``ablagen
sweep`` refuse bad input before they write anything; ``run_study`` checks the
study's recorded ``--amp`` against ``--device`` before any run starts.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablagen.generate.context import TrainConfig
from ablagen.core.errors import ConfigError
from ablagen.orchestrate.options import RunOptions


def _cuda_device_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def visible_gpus() -> list[str]:
    """For each GPU this process sees (torch's index i), the ``CUDA_VISIBLE_DEVICES``
    entry that shows a child process that GPU alone."""
    count = _cuda_device_count()
    outer = os.environ.get("CUDA_VISIBLE_DEVICES")
    if outer is None:
        return [str(i) for i in range(count)]
    names = itertools.takewhile(bool, (n.strip() for n in outer.split(",")))
    return list(names)[:count]  # CUDA stops at the first empty entry too


def parse_gpus(text: str) -> tuple[int, ...]:
    """``"0,1,3"`` -> (0, 1, 3): distinct non-negative GPU indices."""
    try:
        gpus = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        gpus = ()
    if not gpus or any(g < 0 for g in gpus):
        raise ConfigError(
            f"bad --gpus {text!r}: not a list of GPU indices",
            "pass indices as a comma list, e.g. --gpus 0,1",
        )
    if len(set(gpus)) != len(gpus):
        raise ConfigError(
            f"bad --gpus {text!r}: a GPU is listed twice",
            "list each GPU once (use --runs-per-gpu to run more on one GPU)",
        )
    return gpus


@dataclass(frozen=True)
class Placement:
    """The GPUs the workers are dealt over, and what each worker's runs see."""

    gpus: tuple[int, ...]  # torch indices, as passed to --gpus
    names: tuple[str, ...]  # the CUDA_VISIBLE_DEVICES entry of each of them
    runs_per_gpu: int

    @property
    def slots(self) -> int:
        return len(self.gpus) * self.runs_per_gpu

    def gpu_of(self, worker: int) -> int:
        return self.gpus[worker % len(self.gpus)]

    def env(self, worker: int) -> dict[str, str]:
        """The environment worker ``worker``'s runs get on top of the orchestrator's."""
        return {"CUDA_VISIBLE_DEVICES": self.names[worker % len(self.gpus)]}

    def describe(self) -> str:
        listed = ",".join(map(str, self.gpus))
        many = "s" if len(self.gpus) > 1 else ""
        return f"GPU{many} {listed}, at most {self.runs_per_gpu} run(s) per GPU"


def place(
    device: str,
    gpus: tuple[int, ...] | None,
    runs_per_gpu: int,
    visible: Callable[[], list[str]] | None = None,
) -> Placement | None:
    """The placement of a local CUDA study (None on CPU); bad input is one line."""
    if device != "cuda":
        if gpus is not None:
            raise ConfigError(
                f"--gpus {','.join(map(str, gpus))} needs CUDA runs",
                "add --device cuda (or drop --gpus)",
            )
        return None
    names = (visible or visible_gpus)()
    if not names:
        raise ConfigError(
            "--device cuda, but no CUDA GPU is visible here (torch.cuda.is_available() is False)",
            "run on a machine with a GPU and a CUDA build of torch, or pass --device cpu",
        )
    chosen = tuple(range(len(names))) if gpus is None else gpus
    missing = [g for g in chosen if g >= len(names)]
    if missing:
        raise ConfigError(
            f"--gpus: GPU {missing[0]} does not exist (this machine shows {len(names)}: 0 to {len(names) - 1})",
            f"pass indices from 0 to {len(names) - 1}, e.g. --gpus {','.join(map(str, range(len(names))))}",
        )
    return Placement(chosen, tuple(names[g] for g in chosen), runs_per_gpu)


def check_amp(amp: str, device: str, study: str | Path | None = None) -> None:
    """fp16 mixed precision needs CUDA (bf16 runs on CPU too): one line otherwise.

    ``study``: the study whose manifest recorded ``amp`` (the fix is then to
    regenerate it); ``None``: ``amp`` is an option of this command.
    """
    if amp != "fp16" or device == "cuda":
        return
    said = f"{study} was generated with --amp fp16" if study else "--amp fp16"
    fix = "regenerate it with --amp bf16" if study else "use --amp bf16"
    raise ConfigError(
        f"{said}, which needs CUDA, but the runs use --device {device}",
        f"pass --device cuda, or {fix} (bf16 runs on CPU too)",
    )


def recorded_amp(config: Mapping[str, Any]) -> str:
    """The ``--amp`` a study's manifest config records ("none" where it records no
    training settings, as a hand-made or older study's manifest may not)."""
    train = config.get("train")
    if not isinstance(train, dict):
        return "none"
    try:
        return TrainConfig.from_manifest(train).amp
    except TypeError:  # not TrainConfig's fields: no recorded precision to check
        return "none"


def check_devices(options: RunOptions, amp: str = "none") -> Placement | None:
    """Every device check of runs with ``options`` whose scripts train with ``amp``,
    before anything is generated or run: fp16 needs CUDA; local CUDA runs need a
    visible GPU and the ``--gpus`` asked for (see :func:`place`)."""
    check_amp(amp, options.device)
    if options.backend != "local":
        return None
    return place(options.device, options.gpus, options.runs_per_gpu)
