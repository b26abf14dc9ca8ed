from typing import List, Optional

import torch
from torch import Tensor, nn


class SignalNet(nn.Module):
    """1-D convolutions over (channels, length) signals, with type hints."""

    def __init__(self, channels: List[int] = [2, 8, 16], num_classes: int = 5) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        for cin, cout in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv1d(cin, cout, kernel_size=5, padding=2), nn.BatchNorm1d(cout),
                       nn.LeakyReLU(0.2, inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels[-1], num_classes)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        h = self.features(x)
        if mask is not None:
            h = h * mask
        return self.head(torch.tanh(h).mean(-1))
