"""An MLP trained on a CSV file: numeric feature columns and one target column.

    ablagen generate examples/csv_mlp.py --dataset csv:measurements.csv --target label \\
        --out generated/csv_mlp

The scripts read the file themselves (the feature columns and class labels found at
generate time are written into them) and standardize the features with the training
split's mean and standard deviation. ``INPUT_SHAPE`` is the number of feature columns.
"""

import torch
from torch import nn

INPUT_SHAPE = (6,)


class CsvMLP(nn.Module):
    def __init__(self, features: int = 6, hidden: int = 32, classes: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
