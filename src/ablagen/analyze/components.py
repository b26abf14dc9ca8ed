"""The component inventory's data: frozen records, stable ids, JSON form."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

KINDS = ("layer", "block", "activation", "neuron", "head")
#: how the inventory was read: torch.fx, torch.export (non-strict), forward hooks
TRACERS = ("fx", "export", "hooks")
METHODS = ("identity", "zero", "mean", "mask")

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Component:
    """Something that can be ablated.

    ``id`` is stable across runs: a module's qualified name (``layer1.0.conv1``),
    ``name@k`` for the k-th call site of a module called more than once,
    ``fn.<node>`` for a functional activation call site (the torch.fx node name),
    ``layer[a:b]`` / ``layer[i]`` for a group of a layer's output units,
    ``attention.heads[h]`` for head ``h`` of an attention module,
    ``fn.<owner>.<op>@k`` for the k-th functional activation of that kind in module
    ``owner``, found by torch.export where torch.fx could not trace.
    """

    id: str
    kind: str  # one of KINDS
    op: str  # module class name, or the function / method name
    module: str | None  # qualified name of the module, None for functional calls
    call_site: int | None  # index among the module's call sites, when it has several
    node: str | None  # torch.fx node name, None for blocks and untraced models
    input_shape: Shape | None
    output_shape: Shape | None
    params: int
    methods: tuple[str, ...]
    feeds_residual: bool = False
    param_owner: str | None = None  # module whose parameters carry this importance
    units: tuple[int, int] | None = None  # [start, stop) output units, neurons only
    unit_dim: int | None = None  # the output dimension holding the units
    # heads: head ``head`` of ``num_heads``, split off the input of ``out_proj``
    head: int | None = None
    num_heads: int | None = None
    out_proj: str | None = None
    # functional calls found by torch.export: the op, and its index among that op's
    # calls made directly by ``module`` (ablated by a call-site edit at run time)
    call_op: str | None = None
    call_index: int | None = None
    # the parameter slices (name, dim, start, stop) this component's importance goes
    # to, where they are not simply the owner's output units along dim 0
    slices: tuple[tuple[str, int, int, int], ...] | None = None
    # parameters that no longer affect the output once this component outputs zeros:
    # its own and those upstream that reach the output only through it; set where
    # that is more than its own (None: its own, or none at a shared call site)
    cut_params: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("input_shape", "output_shape", "methods", "units"):
            if data[key] is not None:
                data[key] = list(data[key])
        for key in _OPTIONAL:  # left out when unset: older manifests stay as they were
            if data[key] is None:
                del data[key]
        if "slices" in data:
            data["slices"] = [list(s) for s in data["slices"]]
        return data


_OPTIONAL = (
    "head",
    "num_heads",
    "out_proj",
    "call_op",
    "call_index",
    "slices",
    "cut_params",
)


@dataclass(frozen=True)
class Inventory:
    model: str  # how the model was found, e.g. "class DigitsCNN"
    traced: bool  # True: torch.fx traced it (the knockout engine's fast path applies)
    input_shapes: tuple[Shape, ...]
    components: tuple[Component, ...]
    parameters: tuple[tuple[str, Shape], ...]  # every trainable parameter
    warnings: tuple[str, ...] = field(default=())
    tracer: str = "fx"  # one of TRACERS: which one read the graph
    # component id -> the parameter names zeroing it cuts off (traced models; in
    # memory only: several ablations removed together count their union once)
    cuts: dict[str, frozenset[str]] = field(default_factory=dict, compare=False)
    # functional call site id (``fn.<node>``) -> the module whose forward makes the
    # call, "" for the model's own (traced models; in memory only, for the tree view)
    callers: dict[str, str] = field(default_factory=dict, compare=False)

    def get(self, component_id: str) -> Component | None:
        for comp in self.components:
            if comp.id == component_id:
                return comp
        return None

    def of_kinds(self, kinds: tuple[str, ...] | list[str]) -> list[Component]:
        return [c for c in self.components if c.kind in kinds]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "traced": self.traced,
            "tracer": self.tracer,
            "input_shapes": [list(s) for s in self.input_shapes],
            "parameters": [[n, list(s)] for n, s in self.parameters],
            "warnings": list(self.warnings),
            "components": [c.to_json() for c in self.components],
        }
