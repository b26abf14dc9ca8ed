import torch.nn.functional as F
from torch import nn

INPUT_SHAPE = (3, 6)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)

    def forward(self, x):
        return F.gelu(self.lin(x)) + x


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        return self.out(self.block(x))
