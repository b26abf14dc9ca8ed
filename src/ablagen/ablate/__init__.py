"""The one set of ablation operators: zero, identity, mean, mask.

Self-contained on purpose: it imports only the standard library and torch, so its
source can be embedded into generated scripts that never import ablagen. A retrain
script carries only the definitions its ablation uses
(:func:`ablagen.generate.embed.extract_definitions`); the knockout engine imports the
package and its ``knockout.py`` embeds it whole. Edit it here, never in a script.

- :mod:`.operators`: ``ABLATIONS``, the registry of operators by method name, each
  a module called as ``op(output, source)``;
- :mod:`.hooks`: :func:`ablate_output`, a module's output ablated by a forward hook,
  at every call or at one call site;
- :mod:`.graph`: :func:`ablate_node`, a node of a traced graph edited (functional
  calls, in-place ones made out of place first), or :func:`skip_node`, one skipped;
- :mod:`.heads`: ``HEAD_ABLATIONS`` (mask, mean of one attention head's slice) and
  :func:`ablate_head`, applied at the input of the output projection;
- :mod:`.calls`: :func:`ablate_call`, a functional call edited at run time, for
  models torch.fx cannot trace (the calls torch.export found).
"""

from .calls import CALL_NAMES, CallSiteHook, ablate_call
from .graph import (
    ablate_node,
    first_input,
    forward_defaults,
    out_of_place,
    skip_node,
    trace,
)
from .heads import (
    HEAD_ABLATIONS,
    HeadAblation,
    HeadMaskAblation,
    HeadMeanAblation,
    ablate_head,
)
from .hooks import OutputHook, ablate_output
from .operators import (
    ABLATIONS,
    Ablation,
    IdentityAblation,
    MaskAblation,
    MeanAblation,
    ZeroAblation,
)

#: the modules :func:`ablagen.generate.embed.embed_package` joins, dependencies first
EMBED_ORDER = ("operators", "hooks", "graph", "heads", "calls")

__all__ = [
    "ABLATIONS",
    "CALL_NAMES",
    "CallSiteHook",
    "HEAD_ABLATIONS",
    "HeadAblation",
    "HeadMaskAblation",
    "HeadMeanAblation",
    "ablate_call",
    "ablate_head",
    "EMBED_ORDER",
    "Ablation",
    "IdentityAblation",
    "MaskAblation",
    "MeanAblation",
    "OutputHook",
    "ZeroAblation",
    "ablate_node",
    "trace",
    "forward_defaults",
    "ablate_output",
    "first_input",
    "out_of_place",
    "skip_node",
]
