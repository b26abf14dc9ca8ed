"""A deep, plain MLP for scikit-learn's digits: 16 hidden layers, no residuals, no
normalization, PyTorch's default initialisation.

The setting of Neelakantan et al. (2015), "Adding Gradient Noise Improves Learning
for Very Deep Networks": deep fully connected nets without skip connections or
normalization are where gradient noise was reported to help most. Sweep it with::

    ablagen sweep examples/deep_mlp.py --optimizer sgd --lrs 1e-3:1:7
"""

import torch
from torch import nn

INPUT_SHAPE = (64,)  # one sample: the 8x8 digit, flattened
DATASET = "digits"  # scikit-learn's bundled digits (1,797 images, 10 classes)
DEPTH = 16  # hidden layers
WIDTH = 64


class DeepMLP(nn.Module):
    def __init__(self, depth: int = DEPTH, width: int = WIDTH) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(64, width), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
