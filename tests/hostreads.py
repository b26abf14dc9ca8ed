"""Host reads and device syncs of a generated script's training, each one attributed to
the script line it came from, so a test can say "none inside the step loop".

- :class:`HostReads` (any device, CPU included): every call of a tensor method that
  hands a value to Python (``item``, ``tolist``, ``float(t)``, ``bool(t)``, ...) and
  every op that needs the host to see data (``_local_scalar_dense``, which ``item``
  and friends lower to, a boolean-mask index, ``nonzero``, ``torch.equal``, ...);
- :func:`cuda_syncs` (CUDA only): every synchronizing CUDA call torch reports under
  ``torch.cuda.set_sync_debug_mode("warn")``.

Mode ``"error"`` would stop the run at the first sync, and evaluation and the
end-of-epoch reads sync legitimately; so both record every event with the script
line on the stack, and :func:`in_step_loop` picks those made inside the step loop.
"""

from __future__ import annotations

import ast
import collections
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils._python_dispatch import TorchDispatchMode

from scriptutil import load_script, seed_as_main

#: Tensor methods that hand a tensor's value to Python (a device sync on a GPU).
READ_METHODS = (
    "item",
    "tolist",
    "numpy",
    "__float__",
    "__int__",
    "__bool__",
    "__index__",
    "__complex__",
    "__format__",
    "__repr__",
)

_aten = torch.ops.aten
#: Ops whose result on the host depends on the data (a device sync on a GPU).
SYNC_OPS = {
    _aten._local_scalar_dense.default,  # item, float, int, bool, format
    _aten.nonzero.default,
    _aten.masked_select.default,
    _aten.equal.default,
    _aten.is_nonzero.default,
    _aten._unique2.default,
    _aten.unique_consecutive.default,
    _aten.repeat_interleave.Tensor,
}


@dataclass(frozen=True, eq=False)
class Event:
    """One host read or sync: what it was, and the script lines it came from."""

    what: str
    lines: tuple[int, ...]  # the script's lines on the stack, outermost first
    tensor: torch.Tensor | None = None  # the tensor read (HostReads)


def _script_lines(script: str) -> tuple[int, ...]:
    return tuple(f.lineno for f in traceback.extract_stack() if f.filename == script)


class HostReads(TorchDispatchMode):
    """Records host reads while active: patched tensor methods (through
    ``monkeypatch``: use a fresh ``monkeypatch.context()`` per recorder) and
    data-dependent ops.

    torch.optim keeps each parameter's ``step`` counter on the host (unless
    ``capturable`` or ``fused``) and reads it every step (Adam's bias correction):
    a read of host memory on any device, never a device sync. Those reads are told
    apart by identity (the optimizers' ``state[p]["step"]`` tensors, collected by a
    global step hook) and returned by :meth:`step_counter_reads`, not hidden.

    ``ops=False`` records the patched methods only: torch.compile runs a model
    eagerly, uncompiled, while a dispatch mode is active.
    """

    def __init__(
        self, script: Path, monkeypatch: pytest.MonkeyPatch, ops: bool = True
    ) -> None:
        super().__init__()
        self.script, self.events, self.ops = str(script), [], ops
        self._depth = 0  # a read inside a read (format calls item) counts once
        self._counters: list[torch.Tensor] = []
        self._hook = None
        for name in READ_METHODS:
            monkeypatch.setattr(torch.Tensor, name, self._counting(name))

    def __enter__(self):
        def collect(optimizer, args, kwargs) -> None:
            for state in optimizer.state.values():
                step = state.get("step")
                if isinstance(step, torch.Tensor) and step.device.type == "cpu":
                    if not any(step is c for c in self._counters):
                        self._counters.append(step)

        self._hook = register_optimizer_step_post_hook(collect)
        return super().__enter__() if self.ops else self

    def __exit__(self, *exc):
        self._hook.remove()
        return super().__exit__(*exc) if self.ops else None

    def _is_counter(self, event: Event) -> bool:
        return any(event.tensor is c for c in self._counters)

    def device_reads(self) -> list[Event]:
        """The reads that would sync with a GPU: all but the optimizer step counters."""
        return [e for e in self.events if not self._is_counter(e)]

    def step_counter_reads(self) -> list[Event]:
        return [e for e in self.events if self._is_counter(e)]

    def _record(self, what: str, tensor: torch.Tensor | None = None) -> None:
        self.events.append(Event(what, _script_lines(self.script), tensor))

    def _counting(self, name: str) -> Callable:
        original = getattr(torch.Tensor, name)

        def read(tensor, *args, **kwargs):
            if self._depth == 0:
                self._record(name, tensor)
            self._depth += 1
            try:
                return original(tensor, *args, **kwargs)
            finally:
                self._depth -= 1

        return read

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        bool_index = func is _aten.index.Tensor and any(
            i is not None and i.dtype == torch.bool for i in args[1]
        )
        if self._depth == 0 and (func in SYNC_OPS or bool_index):
            self._record(str(func))
        return func(*args, **(kwargs or {}))


@contextmanager
def cuda_syncs(script: Path, cuda=torch.cuda) -> Iterator[list[Event]]:
    """The synchronizing CUDA calls torch reports while active (mode "warn"), each
    with the script lines on the stack when it was reported. (``cuda``: torch.cuda,
    or a stand-in for a test of this recorder without a GPU.)"""
    events: list[Event] = []

    def show(message, category, *rest) -> None:
        if "synchroniz" in str(message):  # "called a synchronizing CUDA operation"
            events.append(Event(str(message), _script_lines(str(script))))

    cuda.synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show  # restored by catch_warnings
        cuda.set_sync_debug_mode("warn")
        try:
            yield events
        finally:
            cuda.set_sync_debug_mode("default")


def step_loop(script: Path) -> range:
    """The lines of the body of ``train``'s step loop: the first loop calling
    ``backward`` nested in another (the epoch loop), without its header line, which
    also starts each epoch (the DataLoader's per-epoch reads come from there)."""
    tree = ast.parse(script.read_text())
    train = next(
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name == "train"
    )

    def calls_backward(node: ast.AST) -> bool:
        return any(
            isinstance(n, ast.Attribute) and n.attr == "backward"
            for n in ast.walk(node)
        )

    loops = [n for n in ast.walk(train) if isinstance(n, ast.For) and calls_backward(n)]
    loops.sort(key=lambda n: n.lineno)
    assert len(loops) >= 2, f"{script.name}: no step loop in an epoch loop in train()"
    step = loops[1]
    return range(step.body[0].lineno, step.end_lineno + 1)


def in_step_loop(events: list[Event], script: Path) -> list[Event]:
    """The events made inside the step loop (directly or in a function it calls)."""
    loop = step_loop(script)
    return [e for e in events if any(line in loop for line in e.lines)]


def where(events: list[Event]) -> collections.Counter:
    """How many events of each kind came from each place in the script."""
    return collections.Counter((e.what, e.lines) for e in events)


class StepLoopSync(AssertionError):
    """A host read or device sync inside the step loop: what a known per-step sync's
    strict xfail expects (``raises=StepLoopSync``), so a crash does not pass it."""


def assert_none_per_step(script: Path, record: Callable[[int], list[Event]]) -> None:
    """``record(batch_size)``: the events of one epoch. None in the step loop, and
    the same events with batch size 64 as with 16 (4x the steps): once per epoch."""
    few, many = record(64), record(16)  # 23 and 90 steps of the 1,437 train digits
    inside = where(in_step_loop(many, script))
    if inside:
        raise StepLoopSync(f"in the step loop ({step_loop(script)}): {inside}")
    assert where(many) == where(few), "the events grow with the steps"


def train_one_epoch(
    script: Path, batch_size: int, device: str = "cpu", *flags: str
) -> dict:
    """One epoch of the script's ``train(args)``, in-process, seeded as ``main`` does."""
    module = load_script(script)
    argv = ["--device", device, "--epochs", "1", "--batch-size", str(batch_size)]
    args = module.parse_args([*argv, *flags])
    seed_as_main(module, args.seed)
    return module.train(args)


# -- the studies checked: examples/digits_cnn.py, in memory and streamed ----------

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits_cnn.py"

STREAMED_DIGITS = '''

def build_datasets():
    """The same digits as Datasets: the scripts stream them through DataLoaders."""
    from torch.utils.data import TensorDataset

    x_train, y_train, x_val, y_val = build_data()
    return TensorDataset(x_train, y_train), TensorDataset(x_val, y_val)
'''


def generate_digits(out: Path, source: str, options: list[str]) -> Path:
    """``ablagen generate`` of the digits CNN (one variant), ``source``: "in_memory"
    (build_data: tensors on the device) or "streamed" (build_datasets: DataLoaders);
    returns the baseline script."""
    from ablagen.cli import main

    model, dataset = DIGITS, "build_data"
    if source == "streamed":
        text = DIGITS.read_text().split('\nif __name__ == "__main__":')[0]
        model, dataset = out.parent / f"{out.name}_model.py", "build_datasets"
        model.write_text(text + STREAMED_DIGITS)
    argv = ["generate", str(model), "--out", str(out), "--dataset", dataset]
    argv += ["--epochs", "1", "--components", "conv1", *options]
    assert main(argv) == 0, f"ablagen {' '.join(argv)} failed"
    return out / "baseline.py"
