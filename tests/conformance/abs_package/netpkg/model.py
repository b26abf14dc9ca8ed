import torch.nn as nn

from netpkg.config import Settings as S


class Classifier(nn.Module):
    """Built from a config object; its package imports itself by absolute name."""

    @staticmethod
    def defaults():
        return S(width=8, classes=4)

    def __init__(self, config):
        super().__init__()
        self.conv = nn.Conv2d(3, config.width, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(config.width, config.classes)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3)))
