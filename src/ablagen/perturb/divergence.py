"""The divergence signal: a loss or gradient norm gone non-finite or exploded, with
the losses judged on their device (no host sync per step)."""

import math
from typing import Any

import torch


class _Divergence:
    """Flags a loss or gradient norm that is non-finite or exploded: above both
    its first value and ``factor`` times its best (loss) or running mean (norm).

    Losses are judged lazily, on their device: ``observe_loss`` queues the detached
    loss (no kernel, no host sync); every ``CHUNK`` losses the queue folds into four
    device scalars (first and best loss, a flag, the flagged loss) with a few
    vectorized kernels, and ``settle`` (reading ``reason``, ``state_dict``) folds the
    rest and reads those scalars: one host sync. The verdict is the one the rule
    gives judging each loss as it comes (in float64, as ``float(loss)`` reads it).
    """

    CHUNK = 256  # queued losses folded into the device state, without a sync
    _KEPT = (
        "loss_factor",
        "grad_factor",
        "first_loss",
        "best_loss",
        "first_norm",
        "mean_norm",
    )

    def __init__(self, loss_factor: float, grad_factor: float | None) -> None:
        self.loss_factor = loss_factor
        self.grad_factor = grad_factor
        self.first_loss: float | None = None
        self.best_loss = math.inf
        self.first_norm: float | None = None
        self.mean_norm = 0.0
        self._reason: str | None = None
        self._pending: list[torch.Tensor] = []  # losses not judged yet, in order
        # (first or NaN, best, flagged, flagged loss) on the losses' device
        self._device_state: tuple[torch.Tensor, ...] | None = None
        self._unread = False  # the device state holds losses not read yet

    @property
    def reason(self) -> str | None:
        self.settle()
        return self._reason

    def observe_loss(self, loss: float | torch.Tensor) -> None:
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                raise ValueError(
                    f"observe_loss takes one loss value, got a tensor of shape "
                    f"{tuple(loss.shape)}; pass the mean (loss.mean())"
                )
            self._pending.append(loss.detach().reshape(()))
        else:  # a number is already on the host: exact in float64
            self._pending.append(torch.tensor(float(loss), dtype=torch.float64))
        if len(self._pending) >= self.CHUNK:
            self._fold()

    def observe_grad_norm(self, norm: float) -> None:
        self.first_norm = norm if self.first_norm is None else self.first_norm
        if norm > max(self.grad_factor * self.mean_norm, self.first_norm) > 0:
            self.settle()  # a loss flagged before this step comes first
            self._flag(f"gradient norm {norm:.4g} > {self.grad_factor}x its mean")
        self.mean_norm = 0.9 * (self.mean_norm or norm) + 0.1 * norm

    def settle(self) -> None:
        """Judge the queued losses and read the verdict: one host sync, if any queued."""
        if self._pending:
            self._fold()
        if not self._unread:
            return
        self._unread = False
        first, best, flagged, value = torch.stack(self._device_state).tolist()
        self.first_loss = None if math.isnan(first) else first
        self.best_loss = best
        if flagged:
            if not math.isfinite(value):
                self._flag(f"loss is {value}")
            else:
                self._flag(f"loss {value:.4g} > {self.loss_factor}x its best")

    @torch.no_grad()
    def _fold(self) -> None:
        """The rule over the queued losses, vectorized on their device (no sync)."""
        if self._device_state is None:
            tensors = [t for t in self._pending if t.device.type != "cpu"]
            device = tensors[0].device if tensors else torch.device("cpu")
            dtype = torch.float32 if device.type == "mps" else torch.float64
            first = math.nan if self.first_loss is None else self.first_loss
            values = [first, self.best_loss, float(self._reason is not None), 0.0]
            self._device_state = tuple(torch.tensor(values, dtype=dtype, device=device))
        first, best, flagged, flagged_loss = self._device_state
        x = torch.stack([t.to(best.device, best.dtype) for t in self._pending])
        self._pending, self._unread = [], True
        n = len(x)
        finite = torch.isfinite(x)
        clean = torch.where(finite, x, math.inf)
        position = torch.arange(n, device=x.device)
        start = torch.where(finite, position, n).min()  # the first finite loss
        found = clean.gather(0, start.clamp(max=n - 1).view(1))[0]
        first = torch.where(torch.isnan(first) & (start < n), found, first)
        prefix = torch.cummin(clean, 0).values  # best up to and including each loss
        before = torch.cat([best.view(1), torch.minimum(prefix[:-1], best)])
        bound = torch.maximum(self.loss_factor * before, first)
        bad = ~finite | (x > bound)
        hit = torch.where(bad, position, n).min()  # the first bad loss
        value = x.gather(0, hit.clamp(max=n - 1).view(1))[0]
        new = (flagged == 0) & (hit < n)
        self._device_state = (
            first,
            torch.minimum(best, prefix[-1]),
            torch.where(hit < n, 1.0, flagged).to(best.dtype),
            torch.where(new, value, flagged_loss),
        )

    def _flag(self, reason: str) -> None:
        self._reason = self._reason or reason

    def state_dict(self) -> dict[str, Any]:
        self.settle()
        state = {name: getattr(self, name) for name in self._KEPT}
        return dict(state, reason=self._reason)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self._KEPT:
            setattr(self, name, state[name])
        self._reason, self._pending, self._device_state = state["reason"], [], None
        self._unread = False
