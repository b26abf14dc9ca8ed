"""A training script with its model in it, as many examples are: the flags are parsed
at import, the seed is set, and the training runs under the main guard."""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

parser = argparse.ArgumentParser(description="MLP on random data")
parser.add_argument("--batch-size", type=int, default=64, metavar="N")
parser.add_argument("--epochs", type=int, default=10, metavar="N")
parser.add_argument("--seed", type=int, default=1, metavar="S")
args = parser.parse_args()
torch.manual_seed(args.seed)


class MLP(nn.Module):
    def __init__(self):
        super(MLP, self).__init__()
        self.fc1 = nn.Linear(20, 32)
        self.fc2 = nn.Linear(32, 3)

    def forward(self, x):
        return F.log_softmax(self.fc2(F.relu(self.fc1(x))), dim=1)


def train(model, epochs):
    optimizer = torch.optim.Adam(model.parameters())
    for _ in range(epochs):
        x, y = torch.randn(args.batch_size, 20), torch.randint(0, 3, (args.batch_size,))
        loss = F.nll_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


if __name__ == "__main__":
    train(MLP(), args.epochs)
