"""An MLP for scikit-learn's wine dataset (178 samples, 13 features, 3 classes).

One GELU module is shared by both hidden layers: ablagen lists each call site as its
own component (``act@0``, ``act@1``) instead of merging them.
"""

import torch
from torch import nn

INPUT_SHAPE = (13,)
DATASET = "wine"  # the built-in dataset the generated scripts train on by default


class TabularMLP(nn.Module):
    def __init__(
        self, in_features: int = 13, hidden: int = 32, num_classes: int = 3
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_features)
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act = nn.GELU()  # called twice
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(self.norm(x)))
        x = self.act(self.fc2(x)) + x  # residual connection around fc2
        return self.head(x)
