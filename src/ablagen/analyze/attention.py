"""Attention heads: which modules have them, and which slices of which parameters
belong to each head.

A head's output is its slice ``[h*d, (h+1)*d)`` of the last dimension of the
attention output *before* the output projection (every implementation below
concatenates the heads head-major there). Found, in this order:

1. any module with ``ablagen_heads = (num_heads, "out_proj_name")`` -- the
   documented hook for architectures this module does not know;
2. ``nn.MultiheadAttention`` (torchvision ViT, Swin-style code): ``num_heads`` and
   ``out_proj``, q/k/v in ``in_proj_weight`` (or ``q/k/v_proj_weight``);
3. a module with a head count (``num_heads``, ``num_attention_heads``, ``n_head``,
   ``n_heads``) and an output projection child (``out_proj``, ``o_proj``,
   ``c_proj``, ``proj``, ...): timm's ``Attention`` (``qkv`` + ``proj``), Hugging
   Face's ViT (``q/k/v_proj`` + ``o_proj``), GPT-2 (``c_attn`` + ``c_proj``, both
   ``Conv1D``), plain-torch GPTs;
4. the same with the projection in the parent's ``output.dense`` (Hugging Face's
   BERT family: ``attention.self`` holds q/k/v, ``attention.output.dense``
   projects); the heads are then named after the parent, ``...attention``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from ablagen.analyze.ops import in_out_features, is_conv1d

HEAD_COUNT_ATTRS = ("num_heads", "num_attention_heads", "n_head", "n_heads")
OUT_PROJ_NAMES = ("out_proj", "o_proj", "c_proj", "proj", "out", "wo", "dense")
FUSED_QKV_NAMES = ("qkv", "c_attn", "Wqkv", "query_key_value", "qkv_proj")
SEPARATE_QKV_NAMES = (
    ("q_proj", "k_proj", "v_proj"),
    ("query", "key", "value"),
    ("q", "k", "v"),
    ("wq", "wk", "wv"),
    ("to_q", "to_k", "to_v"),
)
#: the classes and names this module recognises, for the error that finds none
RECOGNISED = (
    "nn.MultiheadAttention, timm-style Attention (qkv + proj), Hugging Face attention "
    "(BERT, GPT-2, ViT, ...) and modules with a head count (num_heads, "
    "num_attention_heads, n_head) and an output projection (out_proj, o_proj, c_proj, "
    "proj)"
)
MARK_HINT = (
    "mark your attention module with a class attribute "
    "ablagen_heads = (num_heads, 'out_proj_name')"
)

#: (parameter name, dim, start, stop): one slice of one parameter
Slice = tuple[str, int, int, int]


@dataclass(frozen=True)
class AttentionSite:
    """One attention module whose heads are components."""

    name: str  # the components' prefix: ``<name>.heads[h]``
    op: str  # the class of the module that holds the heads
    num_heads: int
    head_dim: int
    out_proj: str  # qualified name of the output projection (its input is split)
    qkv: tuple[tuple[str, int, int], ...]  # (param, dim, offset of q/k/v block)

    def head_slices(self, head: int) -> tuple[Slice, ...]:
        """The parameter slices head ``head`` owns: its q/k/v rows and its columns of
        the output projection (biases of the output projection are shared)."""
        start = head * self.head_dim
        slices = [
            (param, dim, offset + start, offset + start + self.head_dim)
            for param, dim, offset in self.qkv
        ]
        return tuple(slices)

    def head_id(self, head: int) -> str:
        return f"{self.name}.heads[{head}]"


def _linear_slices(prefix: str, module: nn.Module, offsets: list[int]) -> list:
    """q/k/v rows of a Linear (weight dim 0) or Conv1D (weight dim 1), bias dim 0."""
    wdim = 1 if is_conv1d(module) else 0
    out = [(f"{prefix}.weight", wdim, off) for off in offsets]
    if getattr(module, "bias", None) is not None:
        out += [(f"{prefix}.bias", 0, off) for off in offsets]
    return out


def _out_slices(prefix: str, module: nn.Module) -> list:
    """The input columns of the output projection: Linear weight dim 1, Conv1D dim 0."""
    return [(f"{prefix}.weight", 0 if is_conv1d(module) else 1, 0)]


def _qkv(prefix: str, module: nn.Module, width: int) -> list:
    """The q/k/v parameters (with the offsets of their q, k, v blocks) inside ``module``."""
    join = (lambda n: f"{prefix}.{n}") if prefix else (lambda n: n)
    children = dict(module.named_children())
    for name in FUSED_QKV_NAMES:
        feats = in_out_features(children[name]) if name in children else None
        if feats and feats[1] == 3 * width:
            return _linear_slices(join(name), children[name], [0, width, 2 * width])
    for names in SEPARATE_QKV_NAMES:
        if all(n in children and in_out_features(children[n]) for n in names):
            found = []
            for n in names:  # grouped-query k/v (fewer heads) keep their scale
                if in_out_features(children[n])[1] == width:
                    found += _linear_slices(join(n), children[n], [0])
            return found
    return []


def _mha_site(name: str, module: nn.MultiheadAttention) -> AttentionSite:
    join = (lambda n: f"{name}.{n}") if name else (lambda n: n)
    width = module.embed_dim
    if module.in_proj_weight is not None:
        qkv = [(join("in_proj_weight"), 0, k * width) for k in range(3)]
    else:
        qkv = [(join(f"{c}_proj_weight"), 0, 0) for c in "qkv"]
    if module.in_proj_bias is not None:
        qkv += [(join("in_proj_bias"), 0, k * width) for k in range(3)]
    qkv += _out_slices(join("out_proj"), module.out_proj)
    return AttentionSite(
        name,
        type(module).__name__,
        module.num_heads,
        module.head_dim,
        join("out_proj"),
        tuple(qkv),
    )


def _head_count(module: nn.Module) -> int | None:
    for attr in HEAD_COUNT_ATTRS:
        value = getattr(module, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _site(
    model: nn.Module, name: str, module: nn.Module
) -> tuple[AttentionSite | None, str | None]:
    """The attention site of ``module`` (or None), and a problem with its marker."""
    join = (lambda n: f"{name}.{n}") if name else (lambda n: n)
    marker = getattr(module, "ablagen_heads", None)
    if isinstance(module, nn.MultiheadAttention) and marker is None:
        return _mha_site(name, module), None
    heads, out_name = marker if marker is not None else (_head_count(module), None)
    if heads is None:
        return None, None
    owner, out_path = name, None
    children = dict(module.named_children())
    for cand in (out_name,) if out_name else OUT_PROJ_NAMES:
        if cand in children or (out_name and _has(module, cand)):
            out_path = join(cand)
            break
    if out_path is None and name and not out_name:  # BERT: the parent's output.dense
        parent = name.rpartition(".")[0]
        sibling = f"{parent}.output.dense" if parent else "output.dense"
        if _has(model, sibling):
            owner, out_path = parent, sibling
    if out_path is None:
        problem = f"{name}.ablagen_heads names {out_name!r}, which it does not have"
        return None, problem if marker is not None else None
    feats = in_out_features(model.get_submodule(out_path))
    if feats is None or feats[0] % heads:
        problem = (
            f"{name}.ablagen_heads: {out_path} is not a Linear / Conv1D whose "
            f"input width divides into {heads} heads"
        )
        return None, problem if marker is not None else None
    width = feats[0]
    qkv = _qkv(name, module, width) + _out_slices(
        out_path, model.get_submodule(out_path)
    )
    if owner != name:
        op = type(model.get_submodule(owner)).__name__
    else:
        op = type(module).__name__
    return AttentionSite(owner, op, heads, width // heads, out_path, tuple(qkv)), None


def _has(root: nn.Module, path: str) -> bool:
    try:
        root.get_submodule(path)
    except AttributeError:
        return False
    return True


def find_attention(model: nn.Module) -> tuple[list[AttentionSite], list[str]]:
    """Every attention site of ``model`` in module order, innermost first when one
    holds another (a model class with a head count of its own is not a site), and
    the problems of modules marked with ``ablagen_heads`` that could not be used."""
    found: list[AttentionSite] = []
    problems: list[str] = []
    for name, module in model.named_modules():
        site, problem = _site(model, name, module)
        if problem:
            problems.append(problem)
        if site is not None:
            found.append(site)
    kept = [s for s in found if not any(_holds(s.name, o.name) for o in found)]
    unique: dict[str, AttentionSite] = {}
    for site in kept:
        unique.setdefault(site.name, site)
    return list(unique.values()), problems


def _holds(outer: str, inner: str) -> bool:
    return outer != inner and (outer == "" or inner.startswith(outer + "."))


def head_ranges(site: AttentionSite) -> Iterator[tuple[int, int, int]]:
    """``(head, start, stop)``: each head's slice of the out projection's input."""
    for h in range(site.num_heads):
        yield h, h * site.head_dim, (h + 1) * site.head_dim
