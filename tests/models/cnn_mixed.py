import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.SiLU()
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        x = self.act(self.conv(x))
        x = F.max_pool2d(x, 2)
        x = torch.sigmoid(x).flatten(1)
        return self.fc(x).relu()


def example_input():
    return torch.zeros(2, 1, 8, 8)
