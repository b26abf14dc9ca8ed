import torch
import torch.nn as nn
import torch.nn.functional as F


class ImageAndMeta(nn.Module):
    """An image and a vector of side information, fused before the classifier."""

    def __init__(self, meta_features=5, num_classes=10):
        super(ImageAndMeta, self).__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.meta = nn.Linear(meta_features, 8)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, image, meta):
        a = F.adaptive_avg_pool2d(F.relu(self.conv(image)), 1).flatten(1)
        b = F.relu(self.meta(meta))
        return self.fc(torch.cat([a, b], dim=1))


def example_input():
    return torch.randn(2, 3, 8, 8), torch.randn(2, 5)
