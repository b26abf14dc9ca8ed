"""Seeded synthetic data that fits the model and the task (``--dataset synthetic``).

The scripts draw the data themselves (``templates/data.py.j2``); what the generator
decides is what they need to know and what must hold for the data to fit:

- token inputs (an integer example input) are drawn from ``[0, token_range)``, the
  size of the embedding that reads the input (:func:`token_range`), so no id falls
  outside the table; their length is the example input's, which the model took;
- the targets follow the task (:func:`check_synthetic` says so in one line when the
  model's output cannot take them): ``lm`` the next tokens of the inputs, ``tokens``
  one label per input position, ``multilabel`` 0/1 vectors, ``classification``
  labels and ``regression`` values from a fixed random projection of the inputs.
"""

from __future__ import annotations

import torch
from torch import nn

from ablagen.core.errors import ConfigError


def token_range(model: nn.Module, example: torch.Tensor) -> int:
    """How many token ids the model's input may hold: the smallest ``nn.Embedding``
    that reads the example input itself (a position or token-type table reads other
    ids and does not bound it); without one, the smallest embedding, else the
    example's largest id + 1."""
    readers: list[int] = []
    sizes: list[int] = []

    def seen(module: nn.Module, args: tuple) -> None:
        ids = args[0] if args else None
        if isinstance(ids, torch.Tensor) and ids.numel() == example.numel():
            if torch.equal(ids.reshape(example.shape), example):
                readers.append(module.num_embeddings)

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            sizes.append(module.num_embeddings)
            handles.append(module.register_forward_pre_hook(seen))
    try:
        with torch.no_grad():
            model(example)
    except Exception:  # the loader ran it already; a failure here bounds nothing
        pass
    finally:
        for handle in handles:
            handle.remove()
    if readers or sizes:
        return min(readers or sizes)
    return int(example.max()) + 1


def check_synthetic(
    task: str, prediction: torch.Tensor, sample: torch.Tensor, where: str
) -> None:
    """One line when the synthetic targets of ``task`` cannot fit ``prediction``
    (the model's output on its example input ``sample``, one sample of it)."""
    tokens = not sample.is_floating_point()
    fix = "give your own data (build_data() or --dataset text:FILE), or pick a --task that fits"
    if task == "lm" and (not tokens or sample.dim() != 1):
        raise ConfigError(
            f"--task lm on synthetic data needs token ids (one sequence per sample), but "
            f"the model in {where} takes {sample.dtype} samples of shape {tuple(sample.shape)}",
            fix,
        )
    if task in ("lm", "tokens") and tuple(prediction.shape[1:2]) != tuple(
        sample.shape[:1]
    ):
        raise ConfigError(
            f"--task {task} on synthetic data gives one target per input position "
            f"({sample.shape[0]}), but the model in {where} predicts "
            f"{tuple(prediction.shape)}",
            fix,
        )
