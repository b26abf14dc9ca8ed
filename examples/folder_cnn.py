"""A small CNN trained on an image folder, with augmentation in ``build_datasets()``.

The folder holds one directory per class (``DIGITS_DIR/<class>/*.png``, the layout of
torchvision's ``ImageFolder``); ``build_datasets()`` reads it with Pillow, flips and
shifts the training images at random (seeded by the DataLoader's workers), and returns
``(train, val)`` Datasets that the scripts stream through DataLoaders:

    DIGITS_DIR=path/to/digits ablagen generate examples/folder_cnn.py --out generated/folder_cnn

Without augmentation, the built-in source does the same: ``--dataset folder:DIR``.
"""

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

INPUT_SHAPE = (1, 16, 16)
DIGITS_DIR = os.environ.get("DIGITS_DIR", "digits")  # the image folder
VAL_EVERY = 5  # every 5th image of each class is held out


class FolderCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.act1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act1(self.conv1(x)))
        return self.head(torch.flatten(self.act2(self.conv2(x)), 1))


class Digits(Dataset):
    """Grayscale images of DIR/<class>/, resized to 16x16, in [0, 1]; ``augment`` flips
    nothing (digits are not symmetric) but shifts each image by up to 2 pixels."""

    def __init__(self, files: list[tuple[Path, int]], augment: bool) -> None:
        self.files, self.augment = files, augment

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.files[index]
        with Image.open(path) as image:
            image = image.convert("L").resize((16, 16))
            pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        x = pixels.view(1, 16, 16).float() / 255
        if self.augment:  # torch's RNG: seeded per worker by the DataLoader
            dx, dy = torch.randint(-2, 3, (2,)).tolist()
            x = torch.roll(F.pad(x, (2, 2, 2, 2)), (dy, dx), dims=(1, 2))[:, 2:-2, 2:-2]
        return x, label


def build_datasets() -> tuple[Dataset, Dataset]:
    root = Path(DIGITS_DIR)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    train, val = [], []
    for label, name in enumerate(classes):
        for i, path in enumerate(sorted((root / name).glob("*.png"))):
            (val if i % VAL_EVERY == 0 else train).append((path, label))
    return Digits(train, augment=True), Digits(val, augment=False)
