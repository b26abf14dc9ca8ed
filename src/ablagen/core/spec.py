"""The model a user names on the command line: ``path.py`` or ``path.py:NAME``."""

from __future__ import annotations

from pathlib import Path


def split_model_spec(spec: str) -> tuple[Path, str | None]:
    """``"models/net.py:Net"`` -> ``(Path("models/net.py"), "Net")``."""
    head, sep, tail = spec.rpartition(":")
    if sep and tail.isidentifier() and head:
        return Path(head), tail
    return Path(spec), None
