import math

import torch
import torch.nn as nn


class PositionalEncoding(nn.Module):
    def __init__(self, d_model, dropout=0.1, max_len=64):
        super(PositionalEncoding, self).__init__()
        self.dropout = nn.Dropout(p=dropout)
        pe = torch.zeros(max_len, d_model)
        position = torch.arange(0, max_len, dtype=torch.float).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        pe = pe.unsqueeze(0).transpose(0, 1)
        self.register_buffer('pe', pe)

    def forward(self, x):
        x = x + self.pe[:x.size(0), :]
        return self.dropout(x)


class TransformerClassifier(nn.Module):
    """Sequence-first, as nn.Transformer layers are by default: input (seq, batch, features)."""

    def __init__(self, features=8, nhead=2, nlayers=1, num_classes=3):
        super(TransformerClassifier, self).__init__()
        self.pos_encoder = PositionalEncoding(features)
        layer = nn.TransformerEncoderLayer(features, nhead, 16, 0.1)
        self.encoder = nn.TransformerEncoder(layer, nlayers)
        self.decoder = nn.Linear(features, num_classes)

    def forward(self, src):
        out = self.encoder(self.pos_encoder(src))
        return self.decoder(out.mean(dim=0))
