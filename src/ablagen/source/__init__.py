"""libcst: read a model file's source, gather facts about it, rewrite it for embedding."""

from ablagen.source.extract import (
    EmbeddedSource,
    embed_model_source,
)

__all__ = ["EmbeddedSource", "embed_model_source"]
