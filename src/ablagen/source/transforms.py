"""Rewriting transforms, one job each; facts come from :mod:`ablagen.source.gather`."""

from __future__ import annotations

import libcst as cst

from ablagen.source.gather import is_main_guard


class DropMainGuard(cst.CSTTransformer):
    """Remove top-level ``if __name__ == "__main__":`` blocks."""

    def leave_Module(self, original: cst.Module, updated: cst.Module) -> cst.Module:
        return updated.with_changes(
            body=[s for s in updated.body if not is_main_guard(s)]
        )


class KeepStatements(cst.CSTTransformer):
    """Keep only the top-level statements at the given indices (module docstring dropped)."""

    def __init__(self, indices: set[int]) -> None:
        super().__init__()
        self.indices = indices

    def leave_Module(self, original: cst.Module, updated: cst.Module) -> cst.Module:
        body = [s for i, s in enumerate(updated.body) if i in self.indices]
        if (
            body
        ):  # the first kept statement must not inherit the file's leading blank lines
            body[0] = body[0].with_changes(leading_lines=())
        return updated.with_changes(body=body, header=())


class SetConstants(cst.CSTTransformer):
    """Give top-level ``NAME = value`` assignments new values (Python source for each)."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__()
        self.values = values
        self.depth = 0
        self.done: set[str] = set()

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return False  # only the top level

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        return False

    def leave_Assign(self, original: cst.Assign, updated: cst.Assign) -> cst.Assign:
        if len(updated.targets) == 1 and isinstance(
            updated.targets[0].target, cst.Name
        ):
            name = updated.targets[0].target.value
            if name in self.values:
                self.done.add(name)
                return updated.with_changes(
                    value=cst.parse_expression(self.values[name])
                )
        return updated


class AtModelFile(cst.CSTTransformer):
    """``__file__`` -> ``os.path.join(os.path.dirname(__file__), RELATIVE)``: in the
    script, the embedded code's ``__file__`` still names the file it came from
    (``Path(__file__).parent / "x.npy"`` reads the data beside the model file)."""

    def __init__(self, relative: str) -> None:
        super().__init__()
        self.expression = cst.parse_expression(
            f"os.path.join(os.path.dirname(__file__), {relative!r})"
        )
        self.replaced = False

    def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.BaseExpression:
        if updated.value != "__file__":
            return updated
        self.replaced = True
        return self.expression
