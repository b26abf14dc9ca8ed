from torch import nn

from sibling_parts import WIDTH, make_head

INPUT_SHAPE = (WIDTH,)


class UsesSibling(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = make_head()

    def forward(self, x):
        return self.head(x)
