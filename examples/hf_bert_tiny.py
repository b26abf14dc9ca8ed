"""A Hugging Face BERT from a tiny config (random weights, nothing downloaded) for
sequence classification on synthetic tokens.

The task: does token MARK occur in the first half of the sequence? Attending to
the right positions solves it. torch.fx cannot trace Hugging Face models, so
ablagen reads this one with torch.export; its heads are found from BERT's layout
(``attention.self`` holds q/k/v, ``attention.output.dense`` projects):

    ablagen analyze examples/hf_bert_tiny.py
    ablagen study examples/hf_bert_tiny.py --kinds heads,neurons --mode knockout

Needs the ``[hf]`` extra (``pip install 'ablagen[hf]'``).
"""

import torch
from transformers import BertConfig, BertForSequenceClassification

VOCAB = 24
LENGTH = 12
MARK = 1

CONFIG = BertConfig(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=LENGTH,
    num_labels=2,
    pad_token_id=0,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def build_model() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(CONFIG)


def example_input() -> torch.Tensor:
    return torch.randint(
        2, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(0)
    )


def build_data():
    """1,600 sequences of tokens 2..VOCAB-1, MARK put into half of them at a random
    position of the first half; label 1 where it is there (1,280 / 320)."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(2, VOCAB, (1600, LENGTH), generator=generator)
    labels = torch.randint(0, 2, (1600,), generator=generator)
    where = torch.randint(0, LENGTH // 2, (1600,), generator=generator)
    rows = labels.nonzero().squeeze(1)
    tokens[rows, where[rows]] = MARK
    return tokens[:1280], labels[:1280], tokens[1280:], labels[1280:]


if __name__ == "__main__":
    model = build_model()
    print(model(example_input()).logits.shape)
