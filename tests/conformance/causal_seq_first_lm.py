"""A word-level language model in the old sequence-first convention: tokens come in
as (time, batch), the causal mask is built from len(src), and nn.TransformerEncoder
runs without batch_first."""

import math

import torch
import torch.nn as nn

VOCAB = 40


class CausalLM(nn.Module):
    def __init__(self, ntoken=VOCAB, d_model=16, nhead=2, nhid=32, nlayers=2):
        super(CausalLM, self).__init__()
        self.d_model = d_model
        self.tok = nn.Embedding(ntoken, d_model)
        block = nn.TransformerEncoderLayer(d_model, nhead, nhid, dropout=0.0)
        self.blocks = nn.TransformerEncoder(block, nlayers, enable_nested_tensor=False)
        self.out = nn.Linear(d_model, ntoken)

    def forward(self, src):
        mask = torch.triu(torch.full((len(src), len(src)), float("-inf")), diagonal=1)
        h = self.tok(src) * math.sqrt(self.d_model)
        return self.out(self.blocks(h, mask=mask))


class BatchFirstLM(nn.Module):
    """The same model for (batch, time) input: transposed on the way in and out."""

    def __init__(self):
        super().__init__()
        self.lm = CausalLM()

    def forward(self, idx):
        return self.lm(idx.t()).transpose(0, 1)
