"""Analysis: trace (torch.fx, then torch.export, then hooks), propagate shapes, list
the ablatable components (layers, blocks, activations, neuron groups, heads)."""

from ablagen.analyze.components import KINDS, METHODS, TRACERS, Component, Inventory
from ablagen.analyze.inventory import DEFAULT_MAX_UNITS, analyze, build_inventory

__all__ = [
    "KINDS",
    "METHODS",
    "TRACERS",
    "DEFAULT_MAX_UNITS",
    "Component",
    "Inventory",
    "analyze",
    "build_inventory",
]
