"""Noise buffers: one flat buffer per bucket, and noise drawn ahead on a side thread."""

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from .noise import NoiseBatch, NoiseKind


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
