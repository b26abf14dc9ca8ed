"""Which variants to generate, and the ablation each one applies.

:func:`plan_variants` picks (component, method) pairs from the inventory;
:func:`ablation_spec` turns one pair into the template context's
:class:`~ablagen.generate.context.AblationSpec`; :func:`script_names` gives each
variant a readable, unique file name of ``[a-z0-9_]`` only.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

import torch
from torch import nn

from ablagen.analyze import KINDS, METHODS, Component, Inventory
from ablagen.generate.context import AblationSpec
from ablagen.analyze.attention import MARK_HINT, RECOGNISED
from ablagen.core.errors import ComponentError

#: the method a component gets when --methods is not given: remove it where the
#: shapes allow, else zero it; neurons are masked
DEFAULT_METHOD_ORDER = ("identity", "zero", "mask")
KIND_ALIASES = {
    "layers": "layer",
    "blocks": "block",
    "activations": "activation",
    "neurons": "neuron",
    "heads": "head",
}
DEFAULT_KINDS = ("layer", "block", "activation")


def parse_kinds(text: str | None) -> tuple[str, ...]:
    if not text:
        return DEFAULT_KINDS
    kinds = []
    for word in (w.strip() for w in text.split(",") if w.strip()):
        kind = KIND_ALIASES.get(word, word)
        if kind not in KINDS:
            raise ComponentError(
                f"unknown kind {word!r}", f"use some of: {', '.join(KIND_ALIASES)}"
            )
        kinds.append(kind)
    return tuple(dict.fromkeys(kinds))


def parse_methods(text: str | None) -> tuple[str, ...] | None:
    if not text:
        return None
    methods = tuple(dict.fromkeys(w.strip() for w in text.split(",") if w.strip()))
    for method in methods:
        if method not in METHODS:
            raise ComponentError(
                f"unknown method {method!r}", f"use some of: {', '.join(METHODS)}"
            )
    return methods


def split_component_spec(spec: str) -> tuple[str, str | None]:
    """``"fc1[0:8]:mask"`` -> ``("fc1[0:8]", "mask")``; ids may hold ':' themselves."""
    head, sep, tail = spec.rpartition(":")
    if sep and tail in METHODS:
        return head, tail
    return spec, None


def plan_variants(
    inventory: Inventory,
    kinds: tuple[str, ...] = DEFAULT_KINDS,
    components: Iterable[str] = (),
    methods: tuple[str, ...] | None = None,
) -> list[tuple[Component, str]]:
    """(component, method) pairs, in inventory order.

    Named ``components`` (``ID`` or ``ID:METHOD``) are taken whatever their kind and
    must exist and accept their method; otherwise every component of ``kinds`` gets
    each of ``methods`` it accepts, or its default method.
    """
    named = [split_component_spec(s) for s in components]
    if named:
        chosen: list[tuple[Component, str]] = []
        for comp_id, method in named:
            comp = inventory.get(comp_id)
            if comp is None:
                raise ComponentError(
                    f"unknown component {comp_id!r}",
                    "list the ids with `ablagen analyze MODEL` (use ID or ID:METHOD)",
                )
            for m in (method,) if method else methods or (default_method(comp),):
                check_method(comp, m)
                chosen.append((comp, m))
        order = {c.id: i for i, c in enumerate(inventory.components)}
        return sorted(
            dict.fromkeys(chosen),
            key=lambda cm: (order[cm[0].id], METHODS.index(cm[1])),
        )
    if "head" in kinds and not inventory.of_kinds(("head",)):
        raise ComponentError(
            f"--kinds heads: {inventory.model} has no attention module ablagen "
            f"recognises (it knows {RECOGNISED})",
            MARK_HINT,
        )
    pairs = []
    for comp in inventory.of_kinds(kinds):
        for m in (
            [m for m in methods if m in comp.methods]
            if methods
            else [default_method(comp)]
        ):
            pairs.append((comp, m))
    return pairs


def default_method(comp: Component) -> str:
    return next(m for m in DEFAULT_METHOD_ORDER + METHODS if m in comp.methods)


def check_method(comp: Component, method: str) -> None:
    if method in comp.methods:
        return
    why = ""
    if method == "identity" and comp.input_shape != comp.output_shape:
        why = f" ({comp.op} changes the shape {_shape(comp.input_shape)} -> {_shape(comp.output_shape)})"
    raise ComponentError(
        f"method {method!r} is not valid for {comp.id}{why}",
        f"use one of: {', '.join(comp.methods)}",
    )


def _shape(shape: tuple[int, ...] | None) -> str:
    return "?" if shape is None else "x".join(map(str, shape))


SUMMARIES = {
    "identity": "it is skipped, its input passes straight through",
    "zero": "its output is replaced by zeros",
    "mean": "its output is replaced by its mean over the batch",
}
HEAD_SUMMARIES = {
    "mask": "its slice of the attention output is set to zero before {proj}",
    "mean": "its slice of the attention output is replaced by its mean over the batch "
    "and positions before {proj}",
}


def ablation_spec(comp: Component, method: str) -> AblationSpec:
    check_method(comp, method)
    units = comp.units
    if method == "mask" and units:
        span = (
            f"unit {units[0]} is"
            if units[1] - units[0] == 1
            else f"units {units[0]}..{units[1] - 1} are"
        )
        summary = f"output {span} set to zero"
    elif comp.kind == "head":
        summary = HEAD_SUMMARIES[method].format(proj=comp.out_proj)
    else:
        summary = SUMMARIES[method]
    if comp.kind == "head":
        template = "head"
    elif comp.call_op is not None:
        template = "call"
    elif comp.module is None:
        template = "fx_node"
    elif method == "identity" and comp.call_site is None:
        template = "replace_identity"
    elif method == "zero" and comp.call_site is None and comp.output_shape is not None:
        template = "zero_hook"  # one tensor out: one forward hook, no operator
    else:
        template = "hook"
    parent, _, child = (comp.module or "").rpartition(".")
    shared = comp.call_site is not None
    ablated = 0 if shared and method != "mask" else comp.params
    if method == "zero" and comp.cut_params is not None:
        ablated = comp.cut_params  # and what reaches the output only through it
    where = f" at call site {comp.call_site}" if shared else ""
    return AblationSpec(
        variant_id=f"{comp.id}:{method}",
        component_id=comp.id,
        kind=comp.kind,
        op=comp.op,
        method=method,
        template=template,
        module=comp.module,
        parent=parent if template == "replace_identity" else None,
        child=child if template == "replace_identity" else None,
        call_site=comp.call_site,
        node=comp.node if template == "fx_node" else None,
        units=units,
        unit_dim=comp.unit_dim if method == "mask" else None,
        ablated_params=ablated,
        summary=summary,
        docstring=f"Ablate {comp.id} ({comp.op}){where}: {summary}.",
        out_proj=comp.out_proj,
        head=comp.head,
        num_heads=comp.num_heads,
        call_op=comp.call_op,
        call_index=comp.call_index,
    )


def script_names(
    variant_ids: list[str], reserved: Iterable[str] = ("baseline",)
) -> dict[str, str]:
    """Readable unique file names: ``layer1.0.conv1:zero`` -> ``layer1_0_conv1__zero.py``."""
    taken = set(reserved)
    names: dict[str, str] = {}
    for vid in sorted(variant_ids):
        comp, _, method = vid.rpartition(":")
        stem = _slug(comp) + "__" + _slug(method)
        name, k = stem, 2
        while name in taken:
            name, k = f"{stem}_{k}", k + 1
        taken.add(name)
        names[vid] = f"{name}.py"
    return names


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return slug or "x"


def keep_in_place(spec: AblationSpec, model: nn.Module, inputs: tuple) -> AblationSpec:
    """``spec``, skipping its module with a forward hook (output = input) where
    replacing it with ``nn.Identity`` breaks the model: a container that reads its
    children's attributes (``nn.TransformerEncoder`` reads ``layers[0].self_attn``)."""
    if spec.template != "replace_identity" or spec.module is None:
        return spec
    parent = model.get_submodule(spec.parent) if spec.parent else model
    original = getattr(parent, spec.child)
    setattr(parent, spec.child, nn.Identity())
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception:  # any failure: the replacement is what broke it
        return dataclasses.replace(
            spec, template="identity_hook", parent=None, child=None
        )
    finally:
        setattr(parent, spec.child, original)
    return spec
