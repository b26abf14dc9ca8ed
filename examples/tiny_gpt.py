"""A tiny GPT in plain torch (nanoGPT's layout): token and position embeddings, pre-norm
blocks of causal self-attention (4 heads) and a GELU MLP, a language-model head.

The task needs attention: each sequence holds random tokens and the answer is the
token at position KEY (a copy task), predicted at the last position -- so some heads
must learn to look back at KEY and ablating them hurts. Study its heads and MLP
neurons with

    ablagen study examples/tiny_gpt.py --kinds heads,neurons --mode knockout

``build_lm()`` is the same network as a language model, trained on a text file:

    ablagen study examples/tiny_gpt.py:build_lm --dataset text:corpus.txt --task lm \
        --kinds heads --mode knockout
"""

import torch
import torch.nn.functional as F
from torch import nn

VOCAB = 16
LENGTH = 12
KEY = 3  # the answer is the token at this position


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, n_head: int, length: int) -> None:
        super().__init__()
        self.n_head, self.dim = n_head, dim
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time = x.size(0), x.size(1)
        q, k, v = self.qkv(x).split(self.dim, dim=2)
        shape = (batch, time, self.n_head, self.dim // self.n_head)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # per head
        y = y.transpose(1, 2).contiguous().view(batch, time, self.dim)
        return self.proj(y)  # the heads, side by side, projected


class MLP(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.proj = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    def __init__(self, dim: int, n_head: int, length: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, n_head, length)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    def __init__(
        self,
        vocab: int = VOCAB,
        length: int = LENGTH,
        dim: int = 32,
        n_head: int = 4,
        n_layer: int = 2,
        lm: bool = False,
    ) -> None:
        super().__init__()
        self.lm = lm
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(length, dim)
        self.h = nn.ModuleList(Block(dim, n_head, length) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.size(1), device=tokens.device)
        x = self.wte(tokens) + self.wpe(positions)
        for block in self.h:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return logits if self.lm else logits[:, -1, :]


def build_lm() -> TinyGPT:
    """The same network as a language model: (batch, time, vocab) scores, for
    ``--task lm`` on a text file (select it as ``examples/tiny_gpt.py:build_lm``)."""
    return TinyGPT(vocab=96, length=96, lm=True)  # up to 96 distinct bytes


def example_input() -> torch.Tensor:
    return torch.randint(
        0, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(0)
    )


def build_data():
    """2,400 random sequences; the label is the token at position KEY (2,000 / 400)."""
    tokens = torch.randint(
        0, VOCAB, (2400, LENGTH), generator=torch.Generator().manual_seed(0)
    )
    labels = tokens[:, KEY].clone()
    return tokens[:2000], labels[:2000], tokens[2000:], labels[2000:]


if __name__ == "__main__":
    model = TinyGPT()
    print(model)
    print(model(example_input()).shape)
