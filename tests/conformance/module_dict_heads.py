import torch
import torch.nn as nn


class MultiBranch(nn.Module):
    def __init__(self):
        super(MultiBranch, self).__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.branches = nn.ModuleDict({
            "local": nn.Conv2d(8, 8, 3, padding=1),
            "wide": nn.Conv2d(8, 8, 5, padding=2),
        })
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        outs = [self.branches[k](x) for k in ("local", "wide")]
        x = torch.cat(outs, dim=1)
        return self.fc(self.pool(x).flatten(1))
