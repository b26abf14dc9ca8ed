import torch
import torch.nn as nn


class LSTMClassifier(nn.Module):
    """Batch-first LSTM over feature sequences; the hidden state is an optional argument."""

    def __init__(self, input_size=6, hidden_size=16, num_layers=1, num_classes=4):
        super(LSTMClassifier, self).__init__()
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True)
        self.fc = nn.Linear(hidden_size, num_classes)

    def init_hidden(self, batch_size, device=None):
        shape = (self.num_layers, batch_size, self.hidden_size)
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)

    def forward(self, x, hidden=None):
        if hidden is None:
            hidden = self.init_hidden(x.size(0), x.device)
        out, _ = self.lstm(x, hidden)
        return self.fc(out[:, -1, :])
