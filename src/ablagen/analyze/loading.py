"""Model file -> model instance, example input and data spec.

A model file is plain Python. :func:`load_model` imports it under a unique module
name (its own directory first on ``sys.path`` so sibling imports work), then finds
the model, in this order:

1. ``path.py:NAME`` -- a class (built with no arguments), a factory function
   (called with no arguments) or a module-level ``nn.Module`` instance;
2. a function ``build_model()``;
3. the single module-level ``nn.Module`` instance;
4. the single ``nn.Module`` subclass defined in the file that builds with no arguments
   and is not used as a part of another such class (so ``ResNet`` wins over ``Block``).

The example input comes from ``example_input()`` (a tensor or a tuple of tensors),
from ``INPUT_SHAPE`` (one sample, no batch dimension) or from ``--input-shape``.
An optional ``build_data()`` returning ``(x_train, y_train, x_val, y_val)`` tensors
is recorded for the generated scripts.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.util
import inspect
import itertools
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from ablagen.core.errors import InputShapeError, ModelFileError, ModelNotFoundError
from ablagen.core.spec import split_model_spec

EXAMPLE_BATCH = 2  # batch size of a synthesized example input
_load_counter = itertools.count()


@dataclass(frozen=True)
class ModelRef:
    """Where the model comes from, as Python the generated scripts can embed."""

    name: str  # the name in the model file: class, function or instance
    how: str  # "class" | "factory" | "instance"
    #: an instance's constructor call (``Net(16)`` of ``net = Net(16)``), built again
    #: by the scripts after they seed (see :func:`constructor_call`)
    call: str | None = None

    @property
    def expression(self) -> str:
        """The expression that builds a fresh model in the embedded source."""
        if self.how == "instance":
            return self.call or f"copy.deepcopy({self.name})"
        return f"{self.name}()"

    @property
    def label(self) -> str:
        return {"class": f"class {self.name}", "factory": f"{self.name}()"}.get(
            self.how, f"instance {self.name}"
        )


@dataclass(frozen=True)
class LoadedModel:
    path: Path
    source: str
    sha256: str
    module: ModuleType
    model: nn.Module
    ref: ModelRef
    example_inputs: tuple[torch.Tensor, ...]
    # "example_input()" | "INPUT_SHAPE" | "--input-shape" | where the data's sample
    # shape came from ("one sample of build_data()", "DATASET = 'digits' (64 features)")
    input_from: str
    has_build_data: bool

    @property
    def input_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(t.shape) for t in self.example_inputs]

    @property
    def input_note(self) -> str | None:
        """One line when the example input was inferred from the data, else None."""
        if self.input_from in _GIVEN:
            return None
        shape = tuple(self.example_inputs[0].shape[1:])
        return (
            f"input shape {shape} inferred from {self.input_from} "
            "(set INPUT_SHAPE or pass --input-shape to choose another)"
        )


#: where an example input the user gave comes from (anything else was inferred)
_GIVEN = ("example_input()", "INPUT_SHAPE", "--input-shape")


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,8,8"`` -> ``(1, 8, 8)``; anything else is an InputShapeError."""
    parts = [p.strip() for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise InputShapeError(
            f"--input-shape {text!r} is not a list of positive integers",
            "give one sample's shape without the batch dimension, e.g. --input-shape 1,8,8",
        )
    return shape


def load_model(
    spec: str,
    input_shape: str | tuple[int, ...] | None = None,
    dataset: str | None = None,
) -> LoadedModel:
    """Import the model file, find the model and its example input, check a forward pass.

    Without an example input, one sample of the data (``dataset``: ``--dataset``,
    else the file's data functions or ``DATASET``) gives its shape."""
    path, name = split_model_spec(spec)
    source = _read_source(path)
    with contextlib.redirect_stdout(sys.stderr):  # its prints: never into --json
        module = _import_file(path, source)
        ref, model = _find_model(module, path, name)
    model.eval()
    if isinstance(input_shape, str):
        input_shape = parse_shape(input_shape)
    inputs, input_from = _example_inputs(module, path, input_shape, model, dataset)
    _check_forward(model, inputs, input_from, path)
    return LoadedModel(
        path=path,
        source=source,
        sha256=hashlib.sha256(source.encode("utf-8")).hexdigest(),
        module=module,
        model=model,
        ref=ref,
        example_inputs=inputs,
        input_from=input_from,
        has_build_data=callable(getattr(module, "build_data", None)),
    )


def _read_source(path: Path) -> str:
    if not path.exists():
        raise ModelFileError(
            f"model file {str(path)!r} does not exist", "check the path"
        )
    if path.suffix != ".py" or not path.is_file():
        raise ModelFileError(
            f"model file {str(path)!r} is not a .py file",
            "point at the Python file that defines the model",
        )
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileError(
            f"cannot read {path}: {exc}", "check the file's permissions and encoding"
        ) from exc
    try:
        compile(source, str(path), "exec")
    except SyntaxError as exc:
        raise ModelFileError(
            f"syntax error in {path} line {exc.lineno}: {exc.msg}", "fix the model file"
        ) from exc
    return source


def _import_file(path: Path, source: str) -> ModuleType:
    """Import ``path`` under a fresh name; drop sibling modules it pulled in afterwards."""
    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()[:10]
    mod_name = f"_ablagen_model_{digest}_{next(_load_counter)}"
    directory = str(path.resolve().parent)
    package = _package_of(path.resolve())
    if package:  # a module of a package: its relative imports need the package
        root, dotted = package
        directory, mod_name = str(root), f"{dotted}.{mod_name}"
    before = set(sys.modules)
    spec = importlib.util.spec_from_file_location(mod_name, path.resolve())
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    sys.path.insert(0, directory)
    argv, sys.argv = sys.argv, [str(path)]  # a module-level parse_args() sees no flags
    try:
        spec.loader.exec_module(module)
    except SystemExit as exc:  # a training script that runs, or exits, when imported
        sys.modules.pop(mod_name, None)
        line = _line_in_file(exc, path)
        raise ModelFileError(
            f"importing {path}{line} exited (SystemExit {exc.code!r}): it runs a "
            "program when imported",
            'put that code under `if __name__ == "__main__":`, or the model in a '
            "file of its own",
        ) from None
    except Exception as exc:
        sys.modules.pop(mod_name, None)
        line = _line_in_file(exc, path)
        raise ModelFileError(
            f"importing {path}{line} failed: {type(exc).__name__}: {exc}",
            "fix the model file or install what it imports",
        ) from exc
    finally:
        sys.argv = argv
        sys.path.remove(directory)
        for name in set(sys.modules) - before - {mod_name}:
            file = getattr(sys.modules[name], "__file__", None) or ""
            if file.startswith(directory):
                del sys.modules[name]
    return module


def _package_of(path: Path) -> tuple[Path, str] | None:
    """(the folder above the outermost package, the dotted package name) of a file in
    a package (its folder has an ``__init__.py``), else None."""
    parts: list[str] = []
    folder = path.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    return (folder, ".".join(parts)) if parts else None


def _line_in_file(exc: BaseException, path: Path) -> str:
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if Path(f.filename) == path.resolve()
    ]
    return f" (line {frames[-1].lineno})" if frames else ""


def _defined_here(obj: Any, module: ModuleType) -> bool:
    return getattr(obj, "__module__", None) == module.__name__


def _find_model(
    module: ModuleType, path: Path, name: str | None
) -> tuple[ModelRef, nn.Module]:
    if name is not None:
        if not hasattr(module, name):
            raise ModelNotFoundError(
                f"{path} has no {name!r}",
                f"use one of: {', '.join(_candidate_names(module)) or 'none found'}",
            )
        return _build(getattr(module, name), name, path)
    if callable(getattr(module, "build_model", None)):
        return _build(module.build_model, "build_model", path)
    instances = [
        n
        for n, v in vars(module).items()
        if isinstance(v, nn.Module) and not n.startswith("_")
    ]
    if len(instances) == 1:
        return _build(getattr(module, instances[0]), instances[0], path)
    classes = [
        n
        for n, v in vars(module).items()
        if inspect.isclass(v) and issubclass(v, nn.Module) and _defined_here(v, module)
    ]
    buildable = _outermost(
        [n for n in classes if _takes_no_args(getattr(module, n))], module
    )
    if len(instances) > 1 or len(buildable) > 1:
        many = instances if len(instances) > 1 else buildable
        raise ModelNotFoundError(
            f"{path} has several candidate models ({', '.join(many)})",
            f"pick one with {path}:NAME",
        )
    if len(buildable) == 1:
        return _build(getattr(module, buildable[0]), buildable[0], path)
    if classes:
        return _build(
            getattr(module, classes[0]), classes[0], path
        )  # reports the arguments
    raise ModelNotFoundError(
        f"no model found in {path}",
        "define build_model(), a module-level nn.Module instance, or an nn.Module subclass",
    )


def _outermost(names: list[str], module: ModuleType) -> list[str]:
    """Drop classes that other candidates use as parts (a ``Block`` inside a ``ResNet``)."""
    if len(names) < 2:
        return names
    parts: dict[str, set[type]] = {}
    for name in names:
        try:
            instance = getattr(module, name)()
        except Exception:  # a class that fails to build is reported when it is chosen
            parts[name] = set()
            continue
        parts[name] = {type(m) for m in instance.modules() if m is not instance}
    return [
        n
        for n in names
        if not any(getattr(module, n) in parts[other] for other in names if other != n)
    ]


#: functions a model file defines for ablagen's other questions: never a model
NOT_MODELS = ("example_input", "build_data", "build_datasets", "build_loaders")


def _candidate_names(module: ModuleType) -> list[str]:
    out = []
    for n, v in vars(module).items():
        if n.startswith("_") or n in NOT_MODELS:
            continue
        is_cls = (
            inspect.isclass(v) and issubclass(v, nn.Module) and _defined_here(v, module)
        )
        is_fn = inspect.isfunction(v) and _defined_here(v, module)
        if is_cls or is_fn or isinstance(v, nn.Module):
            out.append(n)
    return out


def _takes_no_args(fn: Callable[..., Any]) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return all(
        p.default is not inspect.Parameter.empty
        or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        for p in sig.parameters.values()
    )


def _main_guard(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":`` (not run when the scripts embed the file)."""
    test = getattr(node, "test", None)
    return (
        isinstance(node, ast.If)
        and isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
    )


def constructor_call(source: str, name: str) -> str | None:
    """The call that builds the module-level instance ``name`` (``net = Net(16)``),
    if the file assigns it once, from a call, and no later top-level statement
    touches it; else None.

    The instance is built when the file is imported, before a script seeds, so its
    weights would not follow ``--seed``: the scripts evaluate this call again after
    seeding instead of copying it.
    """
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return None
    found = [
        i
        for i, node in enumerate(body)
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign))
        and any(
            isinstance(t, ast.Name) and t.id == name
            for t in getattr(node, "targets", [getattr(node, "target", None)])
        )
    ]
    if len(found) != 1:
        return None
    node = body[found[0]]
    value = getattr(node, "value", None)
    if isinstance(node, ast.AugAssign) or not isinstance(value, ast.Call):
        return None
    if isinstance(node, ast.Assign) and len(node.targets) != 1:
        return None
    for later in body[found[0] + 1 :]:
        if isinstance(later, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue  # runs when called, if ever
        if _main_guard(later):
            continue
        if any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(later)):
            return None  # changed after it was built (.eval(), load_state_dict...)
    return ast.get_source_segment(source, value)


def _build(obj: Any, name: str, path: Path) -> tuple[ModelRef, nn.Module]:
    if isinstance(obj, nn.Module):
        try:
            call = constructor_call(path.read_text(encoding="utf-8"), name)
        except (OSError, UnicodeDecodeError):
            call = None
        if call is None:
            raise ModelNotFoundError(
                f"{path}:{name} is a model instance built when the file is imported,"
                " before a script seeds, and not by one plain"
                f" `{name} = Class(...)` left unchanged, so runs of it would not repeat",
                f"build it in a factory function (`def build_model(): ... return {name}`)",
            )
        return ModelRef(name, "instance", call), obj
    if not callable(obj):
        raise ModelNotFoundError(
            f"{path}:{name} is a {type(obj).__name__}, not a model",
            "name a class, a factory function or an nn.Module instance",
        )
    how = "class" if inspect.isclass(obj) else "factory"
    if not _takes_no_args(obj):
        params = ", ".join(inspect.signature(obj).parameters)
        raise ModelNotFoundError(
            f"{path}:{name} needs arguments ({params})",
            "give them defaults, or add a build_model() function that passes them",
        )
    try:
        model = obj()
    except Exception as exc:
        raise ModelFileError(
            f"building {path}:{name} failed: {type(exc).__name__}: {exc}",
            "fix the model's constructor",
        ) from exc
    if not isinstance(model, nn.Module):
        raise ModelNotFoundError(
            f"{path}:{name}() returned {type(model).__name__}, not an nn.Module",
            "return the model from it",
        )
    return ModelRef(name, how), model


def _example_inputs(
    module: ModuleType,
    path: Path,
    input_shape: tuple[int, ...] | None,
    model: nn.Module | None = None,
    dataset: str | None = None,
) -> tuple[tuple[torch.Tensor, ...], str]:
    if input_shape is not None:
        return (_from_shape(model, input_shape, dataset),), "--input-shape"
    fn = getattr(module, "example_input", None)
    if callable(fn):
        try:
            value = fn()
        except Exception as exc:
            raise InputShapeError(
                f"example_input() in {path} failed: {type(exc).__name__}: {exc}",
                "fix example_input()",
            ) from exc
        inputs = value if isinstance(value, tuple) else (value,)
        if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
            raise InputShapeError(
                f"example_input() in {path} must return a tensor or a tuple of tensors",
                "return e.g. torch.randn(2, 1, 8, 8)",
            )
        return inputs, "example_input()"
    shape = getattr(module, "INPUT_SHAPE", None)
    if shape is not None:
        if not (
            isinstance(shape, (tuple, list))
            and shape
            and all(isinstance(d, int) and d > 0 for d in shape)
        ):
            raise InputShapeError(
                f"INPUT_SHAPE in {path} is {shape!r}, not a tuple of positive integers",
                "set e.g. INPUT_SHAPE = (1, 8, 8) (one sample, no batch dimension)",
            )
        return (_from_shape(model, tuple(shape), dataset),), "INPUT_SHAPE"
    from ablagen.data.shapes import infer_sample_shape  # the data module reads ours

    inferred = infer_sample_shape(
        module, path, dataset, lambda s: model is not None and _runs(model, s)
    )
    if inferred is not None:
        return (_from_shape(model, inferred[0], dataset),), inferred[1]
    raise InputShapeError(
        f"{path} gives no example input and no data to take one sample's shape from",
        f"define INPUT_SHAPE (one sample, no batch dimension) or example_input(), "
        f"or pass --input-shape{_shape_hint(model)}",
    )


def _runs(model: nn.Module, given: tuple[int, ...] | torch.Tensor) -> bool:
    """Whether the model runs on ``given``: a shape (random floats) or a batch."""
    x = _randn(given) if isinstance(given, tuple) else given
    try:
        with torch.no_grad():
            model(x)
    except Exception:  # any failure: the model does not take this shape
        return False
    return True


def _embeds(model: nn.Module | None) -> bool:
    return model is not None and any(
        isinstance(m, (nn.Embedding, nn.EmbeddingBag)) for m in model.modules()
    )


def _from_shape(
    model: nn.Module | None, shape: tuple[int, ...], dataset: str | None
) -> torch.Tensor:
    """A sample shape (``--input-shape``, ``INPUT_SHAPE``, one sample of the data) as
    one example batch: random floats, or a block of token ids (zeros) for text data,
    or for a model that embeds tokens and refuses floats."""
    ids = torch.zeros((EXAMPLE_BATCH, *shape), dtype=torch.long)
    if dataset is not None and dataset.startswith("text:"):
        return ids
    if (
        len(shape) == 1
        and _embeds(model)
        and not _runs(model, shape)
        and _runs(model, ids)
    ):
        return ids
    return _randn(shape)


def _shape_hint(model: nn.Module | None) -> str:
    """`` 30 (fc1 takes 30 features)``: what the model's first layer takes, if it says."""
    if _embeds(model):
        return " T (a block of T token ids: the model embeds tokens)"
    first = next(
        (
            (name, m)
            for name, m in (model.named_modules() if model is not None else ())
            if isinstance(
                m,
                (
                    nn.Linear,
                    nn.Conv1d,
                    nn.Conv2d,
                    nn.Conv3d,
                    nn.RNNBase,
                    nn.RNNCellBase,
                ),
            )
        ),
        None,
    )
    if first is None:
        return " (one sample's shape, e.g. C,H,W or FEATURES)"
    name, layer = first
    if isinstance(layer, nn.Linear):
        return f" {layer.in_features} ({name} takes {layer.in_features} features)"
    if isinstance(layer, nn.RNNCellBase):  # the forward loops over the steps
        size = layer.input_size
        shape = "T" if size == 1 else f"T,{size}"
        return f" {shape} ({name} takes {size} feature{'s' * (size > 1)} a step)"
    if isinstance(layer, nn.RNNBase):  # a sequence of T steps, batch-first or not
        size = layer.input_size
        return f" T,{size} ({name} takes {size} features a step)"
    dims = (
        "L"
        if isinstance(layer, nn.Conv1d)
        else "H,W" if isinstance(layer, nn.Conv2d) else "D,H,W"
    )
    return f" {layer.in_channels},{dims} ({name} takes {layer.in_channels} channels)"


def _randn(shape: tuple[int, ...]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn((EXAMPLE_BATCH, *shape), generator=gen)


def _required_inputs(model: nn.Module) -> list[str]:
    """The names of forward's positional parameters that have no default."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    positional = (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )
    return [p.name for p in params if p.kind in positional and p.default is p.empty]


#: torch's messages for tensors of two float dtypes meeting in one op
_DTYPE_CLASH = re.compile(
    r"must have the same dtype|expected scalar type \w+ but found|"
    r"Input type \(\w+\) and (weight|bias) type|expected m1 and m2 to have the same dtype"
)


def _check_forward(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], input_from: str, path: Path
) -> None:
    """One forward pass on the example input. When it fails on an input the model
    file itself gives (``INPUT_SHAPE``, ``example_input()``, its data), the model is
    broken, not the shape: the message names the layer that failed."""
    entered: list[tuple[str, nn.Module, str]] = []  # modules not yet returned

    def pre(name: str):
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
            got = f" on input of shape {shapes[0]}" if len(shapes) == 1 else ""
            entered.append((name, module, got))

        return hook

    def post(module: nn.Module, args: Any, output: Any) -> None:
        if entered and entered[-1][1] is module:
            entered.pop()

    handles = []
    for name, module in model.named_modules():
        if name and not isinstance(module, torch.jit.ScriptModule):  # no hooks there
            handles.append(module.register_forward_pre_hook(pre(name)))
            handles.append(module.register_forward_hook(post))
    try:
        with torch.no_grad():
            output = model(*inputs)
    except Exception as exc:
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        where = ""
        if entered:
            name, module, got = entered[-1]
            where = f" in {name} ({type(module).__name__}){got}"
        if (
            input_from == "--input-shape"
            and entered
            and isinstance(entered[-1][1], (nn.Embedding, nn.EmbeddingBag))
        ):
            raise InputShapeError(
                f"the model in {path} fails on the input from --input-shape{where}: an "
                "embedding takes integer token ids, and --input-shape gives random floats",
                "train it on text (--dataset text:FILE), or give the model file an "
                "example_input() that returns token ids, e.g. torch.randint(0, VOCAB, (2, T))",
            ) from exc
        wanted = _required_inputs(model)
        if input_from == "--input-shape" and len(wanted) > len(inputs):
            raise InputShapeError(
                f"the model in {path} takes {len(wanted)} inputs ({', '.join(wanted)}) "
                "and --input-shape gives one",
                "define example_input() in the model file returning a batch of each (a "
                "tuple) to analyze it; to train it, --templates with your own loop (the "
                "built-in loop feeds one tensor)",
            ) from exc
        if _DTYPE_CLASH.search(msg):  # not a shape: no other --input-shape helps
            raise InputShapeError(
                f"the model in {path} mixes float dtypes{where}: {msg} (the scripts "
                "feed float32 samples to a float32 model)",
                "make the forward build its tensors in its input's dtype (dtype=x.dtype, "
                "not torch.double) and the model without .double()",
            ) from exc
        if input_from == "--input-shape":
            raise InputShapeError(
                f"the model in {path} fails on the input from --input-shape of shape "
                f"{shapes} (batch first){where}: {msg}",
                f"pass one sample's shape without the batch dimension: "
                f"--input-shape{_shape_hint(model)}",
            ) from exc
        raise InputShapeError(
            f"the model in {path} fails on its own input ({input_from}, shape {shapes} "
            f"batch first){where}: {msg}",
            f"fix the model's forward or its layer sizes{' at ' + entered[-1][0] if entered else ''} "
            f"so it runs on that input (or fix {input_from})",
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
    _check_batch_first(model, inputs, output, path)


def _check_batch_first(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], output: Any, path: Path
) -> None:
    """The scripts feed batches with the batch dimension first: a model that reads it
    elsewhere (sequence-first, as nn.Transformer and nn.LSTM are by default) would
    train on samples mixed across the batch. Seen as an output whose rows are not
    the batch's, or as one sample's row changing when only the other sample does
    (both ways: a causal sequence-first model keeps its first row)."""
    x = inputs[0]
    if not isinstance(output, torch.Tensor) or output.dim() == 0 or len(x) < 2:
        return
    rows = output.shape[0]
    mixed = rows != len(x)

    def differ(a: Any, b: Any) -> bool:
        return not torch.allclose(a, b, rtol=1e-4, atol=1e-5, equal_nan=True)

    with torch.no_grad():
        same = model(*inputs) if not mixed else output
    # random in eval mode (an unconditional F.dropout): the test cannot tell
    for row in (0, 1) if not mixed and not differ(same, output) else ():
        changed = x.clone()  # the other sample, made different (token ids: 0 <-> 1)
        other = 1 - row
        changed[other] = (
            (x[other] == 0).to(x.dtype) if not x.is_floating_point() else x[row]
        )
        with torch.no_grad():
            again = model(changed, *inputs[1:])
        mixed = mixed or differ(again[row], output[row])
    if mixed:
        raise InputShapeError(
            f"the model in {path} mixes the samples of a batch (its output has {rows} "
            f"rows for {len(x)} samples given batch first): it reads the batch on "
            "another dimension, as sequence-first models do",
            "make it batch-first (batch_first=True, or transpose at the top of "
            "forward), or bring your own loop with --templates DIR",
        )
