from torch import nn

INPUT_SHAPE = (5,)


class InplaceShared(nn.Module):
    """torchvision style: one ReLU(inplace=True) called at two sites."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 5)
        self.b = nn.Linear(5, 5)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.b(self.relu(self.a(self.relu(x.clone()))))
