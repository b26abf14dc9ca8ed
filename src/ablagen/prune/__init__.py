"""Ranking -> Torch-Pruning groups -> pruned scripts (``ablagen prune``).

Torch-Pruning (the ``prune`` extra) finds the dependency groups and chooses the
channels; ablagen supplies the importance it chooses by (:mod:`.importance`), turns
the choice into a plan of kept indices (:mod:`.plan`) and writes one standalone
script per ratio that applies it with plain torch (:mod:`.surgery`, :mod:`.study`).
"""
