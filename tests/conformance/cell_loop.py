import torch
import torch.nn as nn


class Stepper(nn.Module):
    """A cell stepped over the time axis by hand, one value a step (a (batch, T)
    series in, the next value predicted at every step)."""

    def __init__(self, hidden=8):
        super(Stepper, self).__init__()
        self.hidden = hidden
        self.cell = nn.LSTMCell(1, hidden)
        self.out = nn.Linear(hidden, 1)

    def zeros(self, input):
        return torch.zeros(input.size(0), self.hidden, dtype=input.dtype)

    def forward(self, input):
        h, c = self.zeros(input), self.zeros(input)
        outputs = []
        for input_t in input.split(1, dim=1):
            h, c = self.cell(input_t, (h, c))
            outputs += [self.out(h)]
        return torch.cat(outputs, dim=1)


class DoubleStepper(Stepper):
    """Its state in float64 whatever the input (the caller calls .double())."""

    def zeros(self, input):
        return torch.zeros(input.size(0), self.hidden, dtype=torch.double)
