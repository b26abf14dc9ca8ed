from torch.nn import Conv2d, Flatten, Linear, MaxPool2d, Module, ReLU, Sequential


class Net(Module):
    def __init__(self, num_classes=10):
        super(Net, self).__init__()
        self.features = Sequential(
            Conv2d(3, 8, kernel_size=3, padding=1), ReLU(), MaxPool2d(2),
            Conv2d(8, 8, kernel_size=3, padding=1), ReLU(), MaxPool2d(2),
        )
        self.classifier = Sequential(Flatten(), Linear(8 * 2 * 2, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))
