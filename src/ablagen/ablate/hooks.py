"""Ablating a module's output with a forward hook, at every call or at one call site."""

from torch import nn

from .operators import Ablation


class OutputHook:
    """A forward hook: the output replaced by ``op.apply(output, input)`` at every call, or
    at call ``call_site`` only, counted from zero at every forward (``reset``, a pre-hook
    on the model). A class, not a closure: a deep copy of the model copies it too."""

    def __init__(self, op, call_site=None):
        self.op, self.call_site, self.calls = op, call_site, 0

    def reset(self, model, inputs):
        self.calls = 0

    def __call__(self, module, inputs, output):
        site, self.calls = self.calls, self.calls + 1
        if self.call_site is not None and site != self.call_site:
            return output
        return self.op.apply(output, inputs[0] if inputs else None)


def ablate_output(model: nn.Module, name: str, op: Ablation, call_site=None):
    """Ablate the output of ``model``'s submodule ``name`` with ``op`` (at one call site).

    The operator joins the model as a submodule, so that its state follows ``.to()``
    and ``.eval()``. Returns the hook's handle."""
    module = model.get_submodule(name)
    if op.passes_input and getattr(module, "inplace", False):
        module.inplace = False  # the skipped call must leave its input intact
    where = name.replace(".", "_") + ("" if call_site is None else f"@{call_site}")
    model.add_module(f"ablation_{op.name}_{where}", op)
    hook = OutputHook(op, call_site)
    model.register_forward_pre_hook(hook.reset)
    return module.register_forward_hook(hook)
