"""The perturbation-aware optimizer as a block of code for generated scripts.

``ablagen.perturb`` is the one source of truth: generated training scripts must not
import ablagen, so they carry its modules' source, joined by
:func:`ablagen.codegen.embed.embed_package`.
"""

from __future__ import annotations

import ablagen.perturb
from ablagen.codegen.embed import embed_package


def perturb_block_source() -> str:
    """``ablagen.perturb`` ready to paste into a script, under one header comment.

    The block keeps its own imports, so it works below any other imports.
    """
    return embed_package(ablagen.perturb, "perturbation-aware optimizer")
