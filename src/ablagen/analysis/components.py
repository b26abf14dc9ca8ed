"""The component inventory's data: frozen records, stable ids, JSON form."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

KINDS = ("layer", "block", "activation", "neuron")
METHODS = ("identity", "zero", "mean", "mask")

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Component:
    """Something that can be ablated.

    ``id`` is stable across runs: a module's qualified name (``layer1.0.conv1``),
    ``name@k`` for the k-th call site of a module called more than once,
    ``fn.<node>`` for a functional activation call site (the torch.fx node name),
    ``layer[a:b]`` / ``layer[i]`` for a group of a layer's output units.
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

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("input_shape", "output_shape", "methods", "units"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data


@dataclass(frozen=True)
class Inventory:
    model: str  # how the model was found, e.g. "class DigitsCNN"
    traced: bool  # False: the hook-based fallback ran
    input_shapes: tuple[Shape, ...]
    components: tuple[Component, ...]
    parameters: tuple[tuple[str, Shape], ...]  # every trainable parameter
    warnings: tuple[str, ...] = field(default=())

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
            "input_shapes": [list(s) for s in self.input_shapes],
            "parameters": [[n, list(s)] for n, s in self.parameters],
            "warnings": list(self.warnings),
            "components": [c.to_json() for c in self.components],
        }
