"""Black by shape: variants whose code differs only in simple literals format alike.

The ablation section of ``fc1[0:50]`` and of ``fc1[50:100]`` differ in strings,
numbers and comments only. Black's decisions depend on their lengths, never on their
characters, for literals it leaves as they are: a decimal integer, a one-line string
with no quote or backslash inside (black only picks its quote character), a comment
that already starts with ``# ``, a one-line docstring with no space at its ends, a
many-line docstring without quotes or backslashes (black may move only its whitespace:
the filler keeps that whitespace, and a literal whose filler black changed is not
mapped back).
:func:`format_by_shape` swaps each such literal for a filler of the same length, lets
black format that skeleton (cached: one call per shape, not per variant), and puts
the literals back in order. Anything it cannot map back is formatted directly.
"""

from __future__ import annotations

import functools
import io
import re
import tokenize
from collections.abc import Callable

_BODY = r"(?:[^\s'\"\\](?:[^'\"\\\n]*[^\s'\"\\])?)"  # no quote, backslash or end space
_SIMPLE = {
    tokenize.NUMBER: re.compile(r"[1-9][0-9]*|0"),
    tokenize.STRING: re.compile(
        rf"'{_BODY}?'|\"{_BODY}?\"|\"\"\"{_BODY}\"\"\""
        r'|"""[^\'"\\]*\n[^\'"\\]*"""'  # many lines: black may only move whitespace
    ),
    tokenize.COMMENT: re.compile(r"# (?!fmt:|type:)\S(?:[^\n]*\S)?"),
}


def format_by_shape(text: str, formatter: Callable[[str], str]) -> str:
    """``formatter(text)``, computed once per shape of ``text`` (see the module)."""
    try:
        literals = _literals(text)
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return formatter(text)
    shapes = [(kind, span, _filler(kind, value)) for kind, span, value in literals]
    skeleton = _replace(text, [(span, filler) for _, span, filler in shapes])
    formatted = _formatted(skeleton, formatter)
    try:
        slots = _literals(formatted)
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return formatter(text)
    if [k for k, _, _ in slots] != [k for k, _, _ in literals]:
        return formatter(text)  # black moved or changed a literal: no mapping
    fills = []
    for (kind, span, out), (_, _, value), (_, _, filler) in zip(
        slots, literals, shapes
    ):
        if kind == tokenize.STRING and out[0] != filler[0]:  # black's quote choice
            filler, value = (
                out[0] + filler[1:-1] + out[-1],
                out[0] + value[1:-1] + out[-1],
            )
        if out != filler:  # black changed it: the original's change may differ
            return formatter(text)
        fills.append((span, value))
    return _replace(formatted, fills)


_formatted = functools.lru_cache(maxsize=4096)(
    lambda skeleton, formatter: formatter(skeleton)
)


def _literals(text: str) -> list[tuple[int, tuple[int, int], str]]:
    """(kind, (start, end) offsets, text) of each simple literal, in order."""
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    found = []
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        pattern = _SIMPLE.get(token.type)
        if pattern is None or not token.string.isascii():
            continue  # (a wide character is two columns to black)
        if not pattern.fullmatch(token.string):
            continue
        (row, col), (end_row, end_col) = token.start, token.end
        span = (starts[row - 1] + col, starts[end_row - 1] + end_col)
        found.append((token.type, span, token.string))
    return found


def _filler(kind: int, value: str) -> str:
    if kind == tokenize.NUMBER:
        return "9" * len(value)
    if kind == tokenize.COMMENT:
        return "# " + "x" * (len(value) - 2)
    quote = 3 if value.startswith('"""') else 1
    body = re.sub(r"\S", "x", value[quote:-quote])  # whitespace kept: black reads it
    return value[:quote] + body + value[-quote:]


def _replace(text: str, fills: list[tuple[tuple[int, int], str]]) -> str:
    out, at = [], 0
    for (start, end), value in fills:
        out += [text[at:start], value]
        at = end
    return "".join(out) + text[at:]
