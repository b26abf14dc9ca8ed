import torch.nn as nn
from layers import *


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.body = nn.Sequential(conv_block(3, 8), conv_block(8, 8))
        self.head = Head(8, 10)

    def forward(self, x):
        return self.head(self.body(x))
