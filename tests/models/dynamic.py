import torch
from torch import nn

INPUT_SHAPE = (4,)


class Dynamic(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.act = nn.ReLU()
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        h = self.act(self.a(x))
        if h.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            h = torch.relu(h * 2)
        return self.b(h)
