"""A tiny character-level transformer language model, trained on a text file.

    ablagen generate examples/char_lm.py --dataset text:corpus.txt --task lm \\
        --out generated/char_lm
    ablagen rank generated/char_lm --metric val_ppl

The text is read as bytes (``--tokenizer byte``); the vocabulary (the distinct bytes
of the file) is fixed at generate time and written into the scripts. ``VOCAB`` below
only bounds it: a file with more distinct bytes is refused with the fix.
"""

import torch
import torch.nn.functional as F
from torch import nn

VOCAB = 96  # at most this many distinct bytes
BLOCK = 32  # tokens per training sequence


class Block(nn.Module):
    """Pre-norm causal self-attention and MLP, each residual."""

    def __init__(self, dim: int = 48, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        q, k, v = (
            z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v)
        )
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, d))
        return x + self.out(self.act(self.fc(self.norm2(x))))


class CharLM(nn.Module):
    def __init__(self, vocab: int = VOCAB, dim: int = 48, block: int = BLOCK) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(block, dim))
        self.block = Block(dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        return self.head(self.norm(self.block(x)))  # (batch, time, vocab)


def example_input():
    return torch.zeros(2, BLOCK, dtype=torch.long)
