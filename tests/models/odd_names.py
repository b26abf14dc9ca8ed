from torch import nn

INPUT_SHAPE = (4,)


class OddNames(nn.Module):
    """ModuleDict keys may hold quotes, spaces and backslashes."""

    def __init__(self):
        super().__init__()
        self.parts = nn.ModuleDict(
            {'it\'s "odd"': nn.Linear(4, 4), "back\\slash x": nn.Linear(4, 2)}
        )

    def forward(self, x):
        return self.parts["back\\slash x"](self.parts['it\'s "odd"'](x).relu())
