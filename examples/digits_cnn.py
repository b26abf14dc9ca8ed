"""A small CNN for scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes).

Run the whole ablation study on it with ``ablagen study examples/digits_cnn.py``.
"""

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SHAPE = (1, 8, 8)  # one sample: channels, height, width
DROPOUT = 0.1  # read by the model; ablagen's --dropout overrides it in the scripts


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.drop = nn.Dropout(DROPOUT)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.conv1(x))
        x = self.pool(self.act2(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))  # a functional activation: its own component
        return self.fc2(self.drop(x))


def build_data():
    """Digits as (x_train, y_train, x_val, y_val): pixels scaled to [0, 1], a fixed 80/20 split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    split = int(0.8 * len(x))
    train, val = order[:split], order[split:]
    return x[train], y[train], x[val], y[val]


if __name__ == "__main__":
    model = DigitsCNN()
    print(model)
    print(model(torch.randn(2, *INPUT_SHAPE)).shape)
