import torch
from torch import nn

HIDDEN = [32, 16]  # module-level list config
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


class MLP(nn.Module):
    def __init__(self, in_features=3 * 8 * 8, num_classes=10, act="gelu"):
        super(MLP, self).__init__()
        sizes = [in_features] + HIDDEN
        self.layers = nn.ModuleList(
            [nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
        )
        self.acts = nn.ModuleList([ACTIVATIONS[act]() for _ in HIDDEN])
        self.head = nn.Linear(sizes[-1], num_classes)

    def forward(self, x):
        x = x.flatten(1)
        for layer, act in zip(self.layers, self.acts):
            x = act(layer(x))
        return self.head(x)
