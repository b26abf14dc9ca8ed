"""The tasks a script can train: what each expects of the model's prediction and targets.

The loss and metric code itself lives in ``templates/loss.py.j2`` (the scripts are
plain torch); this registry is what the generator knows about each task, so a task
that cannot fit the model fails at generate time with one line, not in every run.

=============== ======================================= ======================= ===============
task            loss                                    metrics                 prediction
=============== ======================================= ======================= ===============
classification  cross-entropy                           loss, accuracy          (N, classes)
regression      mean squared error                      loss                    any
multilabel      BCE with logits                         loss, accuracy at 0.5   (N, labels)
tokens          per-token cross-entropy (ignore index)  loss, token accuracy    (N, T, classes)
lm              next-token cross-entropy                loss, perplexity        (N, T, vocab)
=============== ======================================= ======================= ===============
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ablagen.core.errors import ConfigError


@dataclass(frozen=True)
class Task:
    name: str
    prediction_dims: int | None  # None: any
    metrics: tuple[str, ...]  # the "final" metrics of the result JSON, besides losses
    shape_hint: str

    def check(
        self, prediction: torch.Tensor, target: torch.Tensor | None, where: str
    ) -> None:
        """Raise a one-line ConfigError when this task cannot train on ``prediction``."""
        shape = tuple(prediction.shape)
        if (
            self.prediction_dims is not None
            and prediction.dim() != self.prediction_dims
        ):
            raise ConfigError(
                f"--task {self.name} needs a prediction of shape {self.shape_hint}, "
                f"but the model in {where} returns {shape}",
                _fix(self.name),
            )
        if target is None:
            return
        if self.name in ("tokens", "lm") and tuple(target.shape) != shape[:2]:
            last_only = target.dim() == 2 and shape[1:2] == (1,) and target.shape[1] > 1
            raise ConfigError(
                f"--task {self.name}: targets of shape {tuple(target.shape)} do not match "
                f"the model's per-token prediction {shape} from {where}",
                (
                    (
                        "the model scores only the last position (an inference shortcut "
                        "such as logits[:, [-1], :]): return every position's scores "
                        "(batch, time, vocab), e.g. from a factory's small wrapper"
                    )
                    if last_only
                    else "give one label per token: targets (batch, time)"
                ),
            )
        if self.name == "multilabel" and tuple(target.shape) != shape:
            raise ConfigError(
                f"--task multilabel: targets of shape {tuple(target.shape)} do not match "
                f"the model's prediction {shape} from {where}",
                "give one 0/1 target per output: targets (batch, labels)",
            )
        if self.name == "classification" and target.is_floating_point():
            raise ConfigError(
                f"--task classification: the targets from {where} are {target.dtype}, not labels",
                "return integer class labels, or use --task regression or multilabel",
            )


def check_one_label_per_sample(
    task: str, prediction: torch.Tensor, target: torch.Tensor | None, where: str
) -> None:
    """The built-in classification loss takes (batch, classes) scores, or per-position
    scores with per-position labels: refuse a (batch, 1, classes)-like prediction for
    one label per sample (nanoGPT's inference output) before every run fails on it."""
    labels_per_sample = target is None or target.dim() == 1
    if task == "classification" and prediction.dim() > 2 and labels_per_sample:
        raise ConfigError(
            f"--task classification needs one score vector per sample (batch, classes) "
            f"for one label per sample, but the model in {where} returns "
            f"{tuple(prediction.shape)}",
            "return one vector per sample (e.g. logits[:, -1]), give per-position "
            "labels, pick --task lm or tokens, or bring your own loss with --templates",
        )


def _fix(task: str) -> str:
    return {
        "lm": "an lm returns (batch, time, vocab) scores; pick --task classification for one vector per sample",
        "tokens": "a tagger returns (batch, time, tags) scores; pick --task classification for one vector per sample",
    }.get(task, "pick the --task that matches the model's output")


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("classification", None, ("val_acc",), "(batch, classes)"),
        Task("regression", None, (), "any"),
        Task("multilabel", 2, ("val_acc",), "(batch, labels)"),
        Task("tokens", 3, ("val_acc",), "(batch, time, classes)"),
        Task("lm", 3, ("val_ppl",), "(batch, time, vocab)"),
    )
}


def check_task(
    task: str, prediction: torch.Tensor, target: torch.Tensor | None, where: str
) -> None:
    """Check ``task`` can train on the model's ``prediction`` (and ``target``, if known)."""
    TASKS[task].check(prediction, target, where)
