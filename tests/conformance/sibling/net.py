import torch.nn as nn

from blocks import Block, conv3x3


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.stem = conv3x3(3, 8)
        self.block1 = Block(8)
        self.block2 = Block(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(x.mean((2, 3)))
