"""Streamed data: one epoch of a generated script against a hand-written DataLoader loop.

The same model (examples/folder_cnn.py), the same image folder (PNG files written from
scikit-learn's digits), the same DataLoader settings (batch size, workers, seeded
order) and the same optimizer; the generated side is baseline.py's own train(), the
reference is the minimal loop a person would write. Reports samples/s of both and
their ratio, side by side in one run (goal: >= 0.95x).

    python benchmarks/bench_data.py [--images 1797] [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits

from ablagen.generate.context import TrainConfig
from ablagen.generate.build import GenerateOptions, generate_study

ROOT = Path(__file__).resolve().parents[1]


def write_folder(root: Path, count: int) -> None:
    digits = load_digits()
    for i, (image, label) in enumerate(
        zip(digits.images[:count], digits.target[:count])
    ):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255 / 16).astype(np.uint8), mode="L").save(
            folder / f"{i:05d}.png"
        )


def load(path: Path):
    spec = importlib.util.spec_from_file_location("bench_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_baseline"] = module
    spec.loader.exec_module(module)
    return module


def generated_epoch(module, workers: int) -> float:
    args = module.parse_args(["--epochs", "1", "--num-workers", str(workers)])
    module.random.seed(args.seed)  # as its main() seeds
    module.torch.manual_seed(args.seed)
    result = module.train(args)
    return result["samples_per_s"]


def hand_epoch(module, workers: int, batch_size: int, lr: float) -> float:
    """The reference: the script's datasets, a plain DataLoader and a flat loop."""
    torch.manual_seed(0)
    train_set, _ = module.build_datasets()
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=batch_size, shuffle=True, num_workers=workers,
        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    model = module.FolderCNN()  # as its train() builds it
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    start, seen = time.perf_counter(), 0
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1797)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_folder(Path(tmp) / "digits", args.images)
        train = TrainConfig(epochs=1)
        generate_study(
            GenerateOptions(
                model=str(ROOT / "examples" / "folder_cnn.py"),
                out=Path(tmp) / "study",
                dataset=f"folder:{Path(tmp) / 'digits'}",
                kinds="layers",
                train=train,
            )
        )
        module = load(Path(tmp) / "study" / "baseline.py")
        gen, hand = [], []
        for _ in range(args.repeats):  # interleaved, so drift hits both sides alike
            gen.append(generated_epoch(module, args.workers))
            hand.append(hand_epoch(module, args.workers, train.batch_size, train.lr))
        g, h = float(np.median(gen)), float(np.median(hand))
        print(
            f"images {args.images}, workers {args.workers}, median of {args.repeats} epochs"
        )
        print(f"generated script (streamed path): {g:9.0f} samples/s")
        print(f"hand-written DataLoader loop:     {h:9.0f} samples/s")
        print(f"ratio generated / hand-written:   {g / h:9.3f}x  (goal >= 0.95x)")


if __name__ == "__main__":
    main()
