"""The optimizer: guard, clip, add δ_t, then the base optimizer's step."""

import math
from typing import Any, Callable, Iterable, Sequence

import torch

from .buffers import _Bucket, _cores, _Prefetcher
from .divergence import _Divergence
from .noise import NoiseKind, make_noise
from .schedules import ConstantSchedule, Schedule, make_schedule


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
    ``observe_loss(loss)`` and ``diverged`` are a divergence signal for the loop:
    observing is free of host syncs, reading ``diverged`` costs one.
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
            "divergence": self._divergence.state_dict(),
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
        self._divergence.load_state_dict(perturb["divergence"])

    # -- perturbation ---------------------------------------------------------

    @property
    def diverged(self) -> bool:
        """True once the loss or the gradient norm went non-finite or exploded
        (reading it judges the losses observed since the last read: one host sync)."""
        return self._divergence.reason is not None

    @property
    def divergence_reason(self) -> str | None:
        return self._divergence.reason

    def observe_loss(self, loss: float | torch.Tensor) -> None:
        """Feed a loss (one value: a number or a tensor) to the divergence signal.

        No host sync: a tensor is kept, detached, and judged on its device when
        ``diverged`` or ``divergence_reason`` is read (one sync then), so a loop
        can observe every step and read the signal once per epoch or per log line.
        The verdict is the one judging each loss as it comes would give: a loss
        diverged when non-finite, or above both ``loss_explosion_factor`` times the
        best loss before it and the first loss seen. Do not change the tensor in
        place afterwards. With ``grad_explosion_factor`` set, the gradient norm
        (seen in ``step``) likewise against that factor times its mean; it is off
        by default because it costs a norm pass over every gradient each step
        (unless clipping already takes one).
        """
        self._divergence.observe_loss(loss)

    def current_sigma(self) -> float:
        """σ_t for the next step, before group and unit scales."""
        return self.sigma * self.schedule(self._step)

    def set_unit_scale(
        self,
        param: torch.Tensor | str,
        scale: float | Sequence[float] | torch.Tensor | None,
        dim: int = 0,
    ) -> None:
        """Multiply σ for one parameter: by one number, or by one per unit along ``dim``.

        Per-unit scales have shape (param.shape[dim],) and broadcast over the other
        dims: with dim 0 (output units) a Linear weight (out, in), its bias (out,)
        and a conv weight (out, in, kh, kw) all take shape (out,); an attention
        head's columns of an output projection (out, in) take dim 1, shape (in,).
        ``param`` is the tensor, or its name when ``param_names`` was given;
        ``scale=None`` removes the scale.
        """
        key = self._locate(param)
        self._reset_buckets()
        if scale is None:
            self._scales.pop(key, None)
            return
        tensor = self.param_groups[key[0]]["params"][key[1]]
        values = torch.as_tensor(scale).detach().to(tensor.device, tensor.dtype)
        if values.dim() > 0 and not -tensor.dim() <= dim < tensor.dim():
            raise ValueError(
                f"unit scale for {self._describe(key)}: dim {dim} is out of range "
                f"for a parameter of shape {tuple(tensor.shape)}"
            )
        units = (tensor.shape[dim],) if values.dim() > 0 else ()
        if values.dim() > 0 and tuple(values.shape) != units:
            raise ValueError(
                f"unit scale for {self._describe(key)} has shape "
                f"{tuple(values.shape)}; expected one number or shape {units}, "
                f"one value per unit along dim {dim}"
            )
        if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
            raise ValueError(
                f"unit scale for {self._describe(key)} must be finite, >= 0"
            )
        if values.dim() > 0:
            shape = [1] * tensor.dim()
            shape[dim] = -1
            values = values.reshape(shape)
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
