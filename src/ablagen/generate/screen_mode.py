"""Screen mode: ``baseline.py`` as in retrain mode, plus one ``screen.py`` for all.

``screen.py`` trains the baseline once (or loads it from ``--checkpoint``) exactly as
``knockout.py`` does, then estimates every planned ablation's change of the
validation loss from forward and backward passes with the embedded screen
(:mod:`ablagen.screen`). Its manifest entries are shaped like knockout mode's (one
shared script, ``extra={"knockout": True}``, one record per entry), so ``ablagen run``,
``rank``, the report and the noise scales take a screen as they take a knockout
study; the variants carry ``val_loss`` only (the screen estimates no accuracy).
"""

from __future__ import annotations

from typing import Any

import jinja2

import ablagen.ablate
import ablagen.knockout_engine
import ablagen.screen
from ablagen.analyze import Inventory
from ablagen.generate.context import AblationSpec, ScriptContext
from ablagen.generate.embed import embed_package
from ablagen.generate.knockout_mode import (
    DEFAULT_MAX_BATCH_MB,
    knockout_rows,
    shared_entries,
    top_template_is,
)
from ablagen.generate.render import render_script
from ablagen.core.errors import ConfigError
from ablagen.analyze.loading import LoadedModel
from ablagen.screen import GGN_RANK, GGN_SHARE
from ablagen.core.studydir import BASELINE_ID, VariantEntry

SCREEN_SCRIPT = "screen.py"
SCREEN_TEMPLATE = "screen.py.j2"
DEFAULT_CURVATURE = "ggn"

#: the metric a screen estimates (it has no accuracy of the variants)
SCREEN_METRIC = "val_loss"


def screen_block_source() -> str:
    """``ablagen.screen`` with the knockout engine and operators it uses, ready to paste."""
    return embed_package(
        ablagen.screen,
        "screen",
        needs=(ablagen.ablate, ablagen.knockout_engine),
    )


def render_screen(
    env: jinja2.Environment,
    base: dict[str, Any],
    specs: list[AblationSpec],
    loaded: LoadedModel,
    inventory: Inventory,
    custom_templates: bool,
) -> tuple[dict[str, bytes], list[VariantEntry]]:
    """``screen.py`` and the manifest entries (baseline first) that all point to it."""
    fix = "provide --templates DIR with your own screen.py.j2, or use --mode knockout"
    if len(loaded.example_inputs) != 1 and not custom_templates:
        raise ConfigError(
            f"screen mode feeds the model one tensor, but {loaded.path}'s model takes "
            f"{len(loaded.example_inputs)} inputs",
            fix,
        )
    ctx = ScriptContext(
        script_name=SCREEN_SCRIPT,
        variant_id=BASELINE_ID,  # the script's own training run is the baseline
        title=f"Screen of {loaded.ref.label}: trained once, {len(specs)} ablations estimated.",
        description=_DESCRIPTION,
        ablations=(),
        extra={
            "knockouts": knockout_rows(inventory, specs),
            "engine_source": screen_block_source(),  # its imports are hoisted
            "max_batch_mb": DEFAULT_MAX_BATCH_MB,
            "curvature": DEFAULT_CURVATURE,
            "ggn_rank": GGN_RANK,
            "ggn_share": GGN_SHARE,
            "traced": inventory.traced,  # else the screen probes on hooks
        },
        **base,
    )
    data = render_script(top_template_is(env, SCREEN_TEMPLATE), ctx).encode("utf-8")
    return {SCREEN_SCRIPT: data}, shared_entries(SCREEN_SCRIPT, data, specs)


_DESCRIPTION = (
    "Trains the baseline exactly like baseline.py (same code, seed and weights), or",
    "loads it from --checkpoint FILE if FILE exists (else saves it there once trained),",
    "then estimates every ablation in KNOCKOUTS from forward and backward passes over",
    "the validation data: to first order, an ablation that replaces an output a by a'",
    "changes the loss by (a' - a) . dL/da; CURVATURE adds the Gauss-Newton term.",
    "Estimates, not measurements: verify the top ones with knockout.py or retraining.",
    'Besides the baseline run\'s fields, the JSON result holds "variants":',
    "{id: {status, final: {val_loss, val_acc: null}, params_effective}}.",
)
