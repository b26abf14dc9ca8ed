"""Ablating a module's output with a forward hook, at every call or at one call site."""

from torch import nn

from .operators import Ablation


class OutputHook:
    """Output -> ``op(output, input)`` at every call, or at call ``call_site`` only
    (``reset``, a pre-hook, counts from 0 each forward); a class: deep copies copy it"""

    def __init__(self, op, call_site=None):
        self.op, self.call_site, self.calls = op, call_site, 0

    def reset(self, model, inputs):
        self.calls = 0

    def __call__(self, module, inputs, output):
        site, self.calls = self.calls, self.calls + 1
        if self.call_site is not None and site != self.call_site:
            return output
        return self.op(output, inputs[0] if inputs else None)


def ablate_output(model: nn.Module, name: str, op: Ablation, call_site=None):
    """Ablate submodule ``name``'s output with ``op`` (at one call site); ``op`` joins the
    model as a submodule, so its state follows ``.to()`` and ``.eval()``. The handle."""
    module = model.get_submodule(name)
    if op.passes_input and getattr(module, "inplace", False):
        module.inplace = False  # the skipped call must leave its input intact
    where = name.replace(".", "_") + ("" if call_site is None else f"@{call_site}")
    model.add_module(f"ablation_{op.name}_{where}", op)
    hook = OutputHook(op, call_site)
    model.register_forward_pre_hook(hook.reset)
    return module.register_forward_hook(hook)
