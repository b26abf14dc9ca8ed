import torch.nn as nn
import torch.nn.functional as F


class Wide(nn.Module):
    def __init__(self, widen_factor, num_classes, dropout_rate):
        super(Wide, self).__init__()
        width = 4 * widen_factor
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.dropout = nn.Dropout(p=dropout_rate)
        self.linear = nn.Linear(width, num_classes)

    def forward(self, x):
        out = F.relu(self.bn(self.conv(x)))
        out = F.adaptive_avg_pool2d(out, (1, 1)).view(x.size(0), -1)
        return self.linear(self.dropout(out))


def wide_resnet(widen_factor=2, num_classes=10, dropout_rate=0.3):
    return Wide(widen_factor, num_classes, dropout_rate)
