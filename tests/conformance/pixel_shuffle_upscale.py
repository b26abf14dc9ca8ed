import torch.nn as nn
import torch.nn.init as init


class Upscaler(nn.Module):
    """Image in, a larger image out (sub-pixel convolution): a regression per pixel."""

    def __init__(self, scale):
        super(Upscaler, self).__init__()
        self.act = nn.ReLU()
        self.head = nn.Conv2d(1, 8, 3, 1, 1)
        self.body = nn.Conv2d(8, 8, 3, 1, 1)
        self.tail = nn.Conv2d(8, scale ** 2, 3, 1, 1)
        self.shuffle = nn.PixelShuffle(scale)
        init.orthogonal_(self.head.weight, init.calculate_gain("relu"))

    def forward(self, x):
        x = self.act(self.head(x))
        x = self.act(self.body(x))
        return self.shuffle(self.tail(x))


def build_model():
    return Upscaler(scale=2)
