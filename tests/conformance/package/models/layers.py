import torch.nn as nn

__all__ = ["ConvBN"]


class ConvBN(nn.Sequential):
    def __init__(self, cin, cout, stride=1):
        super(ConvBN, self).__init__(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )
