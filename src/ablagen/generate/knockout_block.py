"""The knockout engine as a block of code for generated ``knockout.py`` scripts.

``ablagen.knockout_engine`` is the one source of truth: the scripts must not import
ablagen, so they carry its modules' source, joined by
:func:`ablagen.generate.embed.embed_package` as for the optimizer, after those of
:mod:`ablagen.ablate` (the ablation operators the engine applies).
"""

from __future__ import annotations

import ablagen.ablate
import ablagen.knockout_engine
from ablagen.generate.embed import embed_package


def knockout_block_source() -> str:
    """``ablagen.knockout_engine`` (and the ``ablagen.ablate`` it needs) ready to paste
    into a script, under one header comment."""
    return embed_package(
        ablagen.knockout_engine, "knockout engine", needs=(ablagen.ablate,)
    )
