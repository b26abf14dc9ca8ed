"""Functional activations applied in place: a bare statement and a method call."""

import torch.nn.functional as F
from torch import nn

INPUT_SHAPE = (5,)


class InplaceFunctional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 6)
        self.b = nn.Linear(6, 6)
        self.c = nn.Linear(6, 3)

    def forward(self, x):
        h = self.a(x)
        F.relu(h, inplace=True)  # its result unused: h itself becomes relu(h)
        h = self.b(h)
        h.tanh_()
        return self.c(h) + h.sum(dim=1, keepdim=True)
