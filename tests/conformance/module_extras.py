"""A model file with everything people leave at module level."""
import os
import torch
import torch.nn as nn

print("==> Building model..")
device = 'cuda' if torch.cuda.is_available() else 'cpu'
best_acc = 0  # best test accuracy
start_epoch = 0
EPOCHS = 200
SEED = 1234
criterion = nn.CrossEntropyLoss()


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.fc1 = nn.Linear(3 * 8 * 8, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.view(x.size(0), -1))))


net = Net()


def train(epoch):
    print('\nEpoch: %d' % epoch)
    net.train()


def test(epoch):
    global best_acc
    net.eval()
    if not os.path.isdir('checkpoint'):
        os.mkdir('checkpoint')


def main():
    for epoch in range(start_epoch, start_epoch + EPOCHS):
        train(epoch)
        test(epoch)


if __name__ == "__main__":
    main()
