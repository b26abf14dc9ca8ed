import torch.nn as nn


def conv_bn(inp, oup, stride):
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU6(inplace=True)
    )


class Net(nn.Module):
    def __init__(self, widths=(8, 16, 16), num_classes=10):
        super(Net, self).__init__()
        layers = []
        inp = 3
        for i, w in enumerate(widths):
            layers.append(conv_bn(inp, w, 2 if i else 1))
            inp = w
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(inp, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = x.mean([2, 3])
        return self.classifier(x)
