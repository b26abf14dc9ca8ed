import torch.nn as nn


def conv3x3(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class Block(nn.Module):
    def __init__(self, planes):
        super(Block, self).__init__()
        self.conv = conv3x3(planes, planes)
        self.bn = nn.BatchNorm2d(planes)

    def forward(self, x):
        return nn.functional.relu(x + self.bn(self.conv(x)))
