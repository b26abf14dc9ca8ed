from .small import SmallNet


def tiny_net():
    return SmallNet(num_classes=10)
