"""A model whose own code uses a module the scripts import only sometimes (copy)."""

import copy

import torch
from torch import nn

INPUT_SHAPE = (4,)


class Twin(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = copy.deepcopy(self.a)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(torch.relu(self.b(self.a(x))))


twin = (
    Twin()
)  # an instance: with uses_copy.py:twin the scripts build the model by copying it
