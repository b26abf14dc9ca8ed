"""torch.fx analysis: trace, propagate shapes, list the ablatable components."""

from ablagen.analysis.components import KINDS, METHODS, Component, Inventory
from ablagen.analysis.inventory import DEFAULT_MAX_UNITS, analyze, build_inventory

__all__ = [
    "KINDS",
    "METHODS",
    "DEFAULT_MAX_UNITS",
    "Component",
    "Inventory",
    "analyze",
    "build_inventory",
]
