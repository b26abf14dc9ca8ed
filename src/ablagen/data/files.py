"""The built-in file sources, read once at generate time: ``folder:DIR``, ``csv:FILE``,
``text:FILE``.

Each function checks the file (a clear ConfigError naming it and the fix), records in
the DataSpec what the scripts need to read it the same way every run (the class
names, the feature columns, the vocabulary), and returns one small batch made as the
scripts make it, so the shape and task checks run on the real data.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ablagen.generate.context import DataSpec
from ablagen.core.errors import ConfigError, InputShapeError
from ablagen.generate.request import relative_to as relative_posix
from ablagen.analyze.loading import LoadedModel

#: what torchvision's ImageFolder reads (its IMG_EXTENSIONS)
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)
NORMALIZE = 0.5  # pixels in [0, 1] -> (p - 0.5) / 0.5, in [-1, 1]

Batch = tuple[torch.Tensor, torch.Tensor]


def _existing(path: str, kind: str, want_dir: bool) -> Path:
    p = Path(path)
    if not p.exists():
        raise ConfigError(
            f"{kind} {path!r} does not exist",
            f"check the path given to --dataset {kind}:PATH",
        )
    if p.is_dir() != want_dir:
        what = "a directory" if want_dir else "a file"
        raise ConfigError(
            f"{kind} {path!r} is not {what}", f"give {what} to --dataset {kind}:"
        )
    return p


def _images(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )


def folder_spec(
    base: DataSpec,
    path: str,
    sample: torch.Tensor,
    opts: Any,
    loaded: LoadedModel,
    out: Path,
) -> tuple[DataSpec, Batch]:
    """An ImageFolder layout: DIR/<class>/*.png, or DIR/train/<class> and DIR/val/<class>."""
    from ablagen.data.sources import parse_image_size

    root = _existing(path, "folder", want_dir=True)
    has_val_dir = (root / "train").is_dir() and (root / "val").is_dir()
    class_root = root / "train" if has_val_dir else root
    classes = sorted(
        p.name
        for p in class_root.iterdir()
        if p.is_dir() and not p.name.startswith(".")
    )
    if not classes:
        raise ConfigError(
            f"folder {class_root} has no class directories",
            "put each class's images in DIR/<class>/ (or DIR/train/<class>/ and DIR/val/<class>/)",
        )
    roots = [class_root] + ([root / "val"] if has_val_dir else [])
    firsts = []
    for r in roots:
        for name in classes:
            found = _images(r / name) if (r / name).is_dir() else []
            if not found:
                raise ConfigError(
                    f"class directory {r / name} has no images",
                    f"add images ({', '.join(IMAGE_EXTENSIONS[:3])}, ...) or remove the directory",
                )
            firsts.append(found[0])
    if sample.dim() != 3 or sample.shape[0] not in (1, 3):
        raise InputShapeError(
            f"folder:{path} gives images but the model's input is {tuple(sample.shape)}",
            "give the model an input of (channels, height, width) with 1 or 3 channels",
        )
    size = parse_image_size(opts.image_size) or (
        int(sample.shape[1]),
        int(sample.shape[2]),
    )
    x = torch.stack([load_image(p, int(sample.shape[0]), size) for p in firsts[:2]])
    spec = replace(
        base,
        path=relative_posix(root, out),
        classes=tuple(classes),
        image_size=size,
        has_val_dir=has_val_dir,
    )
    return spec, (x, torch.tensor([0, min(1, len(classes) - 1)]))


def load_image(path: Path, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """One image as the scripts read it: resized, in [-1, 1], (C, H, W)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB").resize(
                (size[1], size[0]), Image.BILINEAR
            )
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot read image {path}: {exc}", "replace or remove the file"
        ) from exc
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    x = pixels.view(size[0], size[1], channels).permute(2, 0, 1).float() / 255
    return (x - NORMALIZE) / NORMALIZE


def csv_spec(
    base: DataSpec,
    path: str,
    sample: torch.Tensor,
    opts: Any,
    loaded: LoadedModel,
    out: Path,
) -> tuple[DataSpec, Batch]:
    """Numeric feature columns and one target column (labels or numbers)."""
    file = _existing(path, "csv", want_dir=False)
    if not opts.target:
        raise ConfigError(f"csv:{path} needs a target column", "pass --target COLUMN")
    try:
        with file.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
            header = list(rows[0].keys()) if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(
            f"cannot read CSV {path}: {exc}", "give a UTF-8 CSV file with a header row"
        ) from exc
    if not rows:
        raise ConfigError(
            f"CSV {path} has no data rows", "give a header row and at least two rows"
        )
    if opts.target not in header:
        raise ConfigError(
            f"CSV {path} has no column {opts.target!r} (columns: {', '.join(header)})",
            "pass one of its columns to --target",
        )
    columns = tuple(c for c in header if c != opts.target)
    for i, row in enumerate(rows, start=2):
        for c in columns:
            try:
                float(row[c])
            except (TypeError, ValueError):
                raise ConfigError(
                    f"CSV {path} line {i}: column {c!r} holds {row[c]!r}, not a number",
                    "give numeric features only (encode categories as numbers first)",
                ) from None
    if len(columns) != sample.numel():
        raise InputShapeError(
            f"CSV {path} has {len(columns)} feature columns but the model takes "
            f"{tuple(sample.shape)} = {sample.numel()} values",
            "make INPUT_SHAPE match the number of feature columns",
        )
    targets = [row[opts.target] for row in rows]
    classes: tuple[str, ...] = ()
    if opts.train.task in ("classification",):
        classes = tuple(sorted(set(targets), key=_label_key))
        y = torch.tensor([classes.index(t) for t in targets[:2]])
    else:
        try:
            y = torch.tensor([float(t) for t in targets[:2]])
        except ValueError:
            raise ConfigError(
                f"CSV {path}: target column {opts.target!r} is not numeric",
                "use --task classification for labels",
            ) from None
    x = torch.tensor([[float(r[c]) for c in columns] for r in rows[:2]]).reshape(
        -1, *sample.shape
    )
    spec = replace(
        base,
        path=relative_posix(file, out),
        target=opts.target,
        columns=columns,
        classes=classes,
    )
    return spec, (x, y)


def _label_key(label: str) -> tuple[int, float, str]:
    """Numeric labels in numeric order ("2" before "10"), then the rest by name."""
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def text_spec(
    base: DataSpec,
    path: str,
    sample: torch.Tensor,
    opts: Any,
    loaded: LoadedModel,
    out: Path,
) -> tuple[DataSpec, Batch]:
    """A text corpus for language modelling, cut into blocks of the model's input length."""
    from ablagen.data.sources import check_tokenizer

    file = _existing(path, "text", want_dir=False)
    tokenizer = check_tokenizer(opts.tokenizer)
    if opts.train.task not in ("lm", "tokens"):
        raise ConfigError(
            f"text:{path} is a language-modelling source but --task is {opts.train.task}",
            "pass --task lm",
        )
    if sample.is_floating_point() or sample.dim() != 1:
        raise InputShapeError(
            f"text:{path} gives token ids but the model's input is {tuple(sample.shape)} {sample.dtype}",
            "give the model a (time,) integer input, e.g. example_input() returning torch.zeros(2, 64, dtype=torch.long)",
        )
    raw = file.read_bytes()
    if tokenizer == "byte":
        vocab = tuple(chr(b) for b in sorted(set(raw)))
        ids = [vocab.index(chr(b)) for b in raw[: 2 * len(sample) + 2]]
        count = len(raw)
    else:
        try:
            words = raw.decode("utf-8").split()
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"text {path} is not UTF-8: {exc}", "use --tokenizer byte"
            ) from exc
        vocab = ("<unk>", *sorted(set(words)))
        index = {w: i for i, w in enumerate(vocab)}
        ids = [index[w] for w in words[: 2 * len(sample) + 2]]
        count = len(words)
    block = len(sample)
    if (
        count * base.val_fraction < block + 1
        or count * (1 - base.val_fraction) < block + 1
    ):
        raise ConfigError(
            f"text {path} has {count} tokens: too few for blocks of {block} in both splits",
            "give more text, or a model with a shorter input",
        )
    t = torch.tensor(ids)
    x = torch.stack([t[:block], t[block + 1 : 2 * block + 1]])
    y = torch.stack([t[1 : block + 1], t[block + 2 : 2 * block + 2]])
    sizes = _token_embedding_sizes(loaded.model, x)
    if sizes and len(vocab) > min(sizes):
        raise ConfigError(
            f"text {path} has {len(vocab)} distinct {tokenizer} tokens but the model embeds {min(sizes)}",
            f"give the model a vocabulary of at least {len(vocab)}",
        )
    spec = replace(
        base, path=relative_posix(file, out), tokenizer=tokenizer, vocab=vocab
    )
    return spec, (x, y)


class _Seen(Exception):
    """The token embedding was found: the forward pass stops there."""


def _token_embedding_sizes(model: torch.nn.Module, ids: torch.Tensor) -> list[int]:
    """The sizes of the embeddings that take the token ids themselves (not a position
    embedding's arange): seen in one forward pass; every embedding's if none does."""
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    seen: list[int] = []

    def hook(module: torch.nn.Module, args: tuple) -> None:
        if args and args[0] is ids:
            seen.append(module.num_embeddings)
            raise _Seen  # the ids may be out of its range: stop before it runs

    handles = [m.register_forward_pre_hook(hook) for m in embeddings]
    try:
        with torch.no_grad():
            model(ids)
    except Exception:  # _Seen, or a forward the analysis reports in its own words
        pass
    finally:
        for handle in handles:
            handle.remove()
    return seen or [m.num_embeddings for m in embeddings]
