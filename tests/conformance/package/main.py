'''Train CIFAR10 with PyTorch: the model comes from the models package.'''
import argparse

import torch
import torch.nn as nn
import torch.optim as optim

from models import *

device = 'cuda' if torch.cuda.is_available() else 'cpu'


def build():
    return SmallNet()


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description='PyTorch CIFAR10 Training')
    parser.add_argument('--lr', default=0.1, type=float, help='learning rate')
    args = parser.parse_args()
    net = build().to(device)
    optimizer = optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
