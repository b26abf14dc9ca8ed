"""What Python's ``open`` audit event (``sys.addaudithook``) says a process reads."""

from __future__ import annotations

import os
from typing import Any

_WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT


def opened_for_reading(args: tuple[Any, ...]) -> str | None:
    """The path an ``open`` event reads, as given (None: a write, an fd)."""
    path, mode, flags = (tuple(args) + (None, None, None))[:3]
    if path is None or isinstance(path, int):
        return None
    if isinstance(mode, str) and any(c in mode for c in "wax+"):
        return None
    if mode is None and isinstance(flags, int) and flags & _WRITES:
        return None
    try:
        return os.fsdecode(os.fspath(path))
    except (TypeError, ValueError):
        return None
