"""A GRU sequence tagger: a novel architecture trained through a custom template.

The task: tag every token of a sequence with 1 if the same token appeared earlier in
the sequence, else 0. It needs memory, so ablating the GRU hurts. The model's output
is one score per token and tag, (batch, time, tags): the built-in ``--task tokens``
trains it (per-token cross-entropy, labels equal to ``--ignore-index`` skipped):

    ablagen generate examples/sequence_tagger/model.py --task tokens \\
        --out generated/sequence_tagger

``templates/loss.py.j2`` shows the other way, a custom template overriding one include;
it trains the same numbers (tests/test_data_sources.py checks it):

    ablagen generate examples/sequence_tagger/model.py \\
        --templates examples/sequence_tagger/templates --out generated/sequence_tagger
"""

import torch
from torch import nn

VOCAB = 12
LENGTH = 16


class SeqTagger(nn.Module):
    def __init__(self, vocab: int = VOCAB, dim: int = 24, tags: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.act = nn.Tanh()
        self.head = nn.Linear(dim, tags)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        states, _ = self.gru(self.embed(tokens))
        return self.head(self.act(states))


def example_input():
    return torch.randint(
        0, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(0)
    )


def build_data():
    """1,200 random sequences, tags computed from them; a fixed 1,000 / 200 split."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (1200, LENGTH), generator=generator)
    seen_before = (
        (tokens.unsqueeze(2) == tokens.unsqueeze(1)).tril(diagonal=-1).any(dim=2)
    )
    tags = seen_before.long()
    return tokens[:1000], tags[:1000], tokens[1000:], tags[1000:]
