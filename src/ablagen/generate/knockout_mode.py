"""Knockout mode: ``baseline.py`` as in retrain mode, plus one ``knockout.py`` for all.

``knockout.py`` trains the baseline once (or loads it from ``--checkpoint``) and scores
every planned ablation on the trained model with the embedded knockout engine
(:mod:`ablagen.knockout_engine`). Every manifest entry -- the baseline and each
``<component>:<method>`` -- names ``knockout.py`` as its script and carries
``extra={"knockout": True}``: the orchestrator runs the script once per seed and
stores one record per entry, :func:`ablagen.core.studydir.split_result` making them from the result's
``"variants"`` map.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jinja2

from ablagen.analyze import Component, Inventory
from ablagen.generate.context import AblationSpec, ScriptContext
from ablagen.generate.env import TOP_TEMPLATE
from ablagen.generate.knockout_block import knockout_block_source
from ablagen.generate.render import render_script
from ablagen.core.errors import ConfigError
from ablagen.core.atomic import sha256_bytes
from ablagen.knockout_engine import Knockout
from ablagen.analyze.loading import LoadedModel
from ablagen.core.studydir import BASELINE_ID, VariantEntry

KNOCKOUT_SCRIPT = "knockout.py"
KNOCKOUT_TEMPLATE = "knockout.py.j2"
DEFAULT_MAX_BATCH_MB = 256


def knockout_kwargs(comp: Component, spec: AblationSpec) -> dict[str, Any]:
    """The engine's :class:`Knockout` fields for one planned ablation, defaults left out."""
    if comp.kind == "block":
        where: dict[str, Any] = {"module": comp.module, "block": True}
    elif comp.kind == "head":  # at the input of the output projection
        where = {"module": comp.module, "out_proj": comp.out_proj, "head": comp.head}
        where["num_heads"] = comp.num_heads
    elif comp.call_op is not None:  # a functional call torch.export found
        where = {"module": comp.module, "call_op": comp.call_op}
        where["call_index"] = comp.call_index
    else:  # a node where traced; the module (and call site) for hooks; neurons: every call
        where = {"module": comp.module, "node": comp.node, "call_site": comp.call_site}
        where.update(units=comp.units, unit_dim=comp.unit_dim)
    where["ablated_params"] = spec.ablated_params
    defaults = {f.name: f.default for f in dataclasses.fields(Knockout)}
    return {
        name: value
        for name, value in where.items()
        if not (value == defaults[name] and type(value) is type(defaults[name]))
    }


def knockouts_for(inventory: Inventory, specs: list[AblationSpec]) -> list[Knockout]:
    """The engine records ``knockout.py`` holds for these ablations (tests, benchmarks)."""
    return [
        Knockout(s.variant_id, s.method, **knockout_kwargs(_component(inventory, s), s))
        for s in specs
    ]


def render_knockout(
    env: jinja2.Environment,
    base: dict[str, Any],
    specs: list[AblationSpec],
    loaded: LoadedModel,
    inventory: Inventory,
    custom_templates: bool,
) -> tuple[dict[str, bytes], list[VariantEntry]]:
    """``knockout.py`` and the manifest entries (baseline first) that all point to it.

    ``base`` holds the :class:`ScriptContext` fields every script of the study shares.
    """
    if len(loaded.example_inputs) != 1 and not custom_templates:
        raise ConfigError(
            f"knockout mode feeds the model one tensor, but {loaded.path}'s model takes "
            f"{len(loaded.example_inputs)} inputs",
            "provide --templates DIR with your own knockout.py.j2, or use --mode retrain",
        )
    ctx = ScriptContext(
        script_name=KNOCKOUT_SCRIPT,
        variant_id=BASELINE_ID,  # the script's own training run is the baseline
        title=f"Knockout study of {loaded.ref.label}: trained once, {len(specs)} ablations scored.",
        description=_description(inventory.traced),
        ablations=(),
        extra={
            "knockouts": knockout_rows(inventory, specs),
            "traced": inventory.traced,
            "engine_source": knockout_block_source(),  # its imports are hoisted
            "max_batch_mb": DEFAULT_MAX_BATCH_MB,
        },
        **base,
    )
    data = render_script(top_template_is(env, KNOCKOUT_TEMPLATE), ctx).encode("utf-8")
    return {KNOCKOUT_SCRIPT: data}, shared_entries(KNOCKOUT_SCRIPT, data, specs)


def knockout_rows(inventory: Inventory, specs: list[AblationSpec]) -> list[dict]:
    """The KNOCKOUTS table of knockout.py and screen.py: one row per ablation."""
    return [
        {
            "variant_id": s.variant_id,
            "method": s.method,
            "fields": list(knockout_kwargs(_component(inventory, s), s).items()),
        }
        for s in specs
    ]


def shared_entries(
    script: str, data: bytes, specs: list[AblationSpec]
) -> list[VariantEntry]:
    """The manifest entries (baseline first) of a study whose every entry is one
    script run once per seed (knockout.py, screen.py): one record per entry."""
    digest, extra = sha256_bytes(data), {"knockout": True}
    entries = [VariantEntry(BASELINE_ID, None, "baseline", None, script, digest, extra)]
    for s in specs:
        entries.append(
            VariantEntry(
                s.variant_id, s.component_id, s.kind, s.method, script, digest, extra
            )
        )
    return entries


def _component(inventory: Inventory, spec: AblationSpec) -> Component:
    comp = inventory.get(spec.component_id)
    if comp is None:  # specs come from this inventory's plan
        raise ValueError(f"component {spec.component_id!r} is not in the inventory")
    return comp


def _description(traced: bool) -> tuple[str, ...]:
    """The docstring's paragraph: one line each, short enough to read without wrapping."""
    how = (
        ("Fast path: activations are cached, only what follows an ablation is recomputed,",
         "and the ablations of one layer run stacked in one pass (--max-batch-mb: memory).")
        if traced
        else ("torch.fx could not trace this model: each ablation runs on a fresh copy",
              "of the trained model, with a forward hook.")
    )  # fmt: skip
    return (
        "Trains the baseline exactly like baseline.py (same code, seed and weights), or",
        "loads it from --checkpoint FILE if FILE exists (else saves it there once trained),",
        "then scores every ablation in KNOCKOUTS on it without retraining; mean ablations",
        "use the mean activation on the training data.",
        *how,
        'Besides the baseline run\'s fields, the JSON result holds "variants":',
        "{id: {status, final, params_effective}}, one for each manifest entry.",
    )


def top_template_is(env: jinja2.Environment, name: str) -> jinja2.Environment:
    """``env`` with its top template name standing for ``name``, so that
    :func:`render_script` (which renders the top template) renders that script."""
    top = jinja2.DictLoader({TOP_TEMPLATE: '{% include "' + name + '" %}'})
    return env.overlay(loader=jinja2.ChoiceLoader([top, env.loader]))
