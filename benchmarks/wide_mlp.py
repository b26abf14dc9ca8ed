"""A wide MLP for the code-generation benchmark: 1,000 output units in one layer."""

from torch import nn

INPUT_SHAPE = (64,)
DATASET = "digits"


class WideMLP(nn.Module):
    def __init__(self, hidden: int = 1000) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))
