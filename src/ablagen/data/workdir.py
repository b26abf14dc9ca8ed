"""Files the model file reads relative to the working directory, which its scripts,
run from their own folder, would not find.

``ablagen generate`` runs the model file's code (its import, its model, its data
functions) in the user's working directory; the scripts run from their study folder.
A path the user's code opens relative to the working directory (``np.load(
"data/x.npy")``, a dataset rooted at ``"../data"``) names one file at generate time
and another one, or none, in every run. :func:`user_reads` records such reads while
the user's code runs (an audit hook; only the opens made below a frame of a file in
the model file's folder, so ablagen's own reads of ``--dataset text:corpus.txt`` do
not count), and :func:`check_reads_from` refuses, in one line, a file the scripts'
folder does not have at that path.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ablagen.core.audit import opened_for_reading
from ablagen.core.errors import ConfigError

_ABLAGEN = str(Path(__file__).resolve().parents[1]) + os.sep
_CODE = (".py", ".pyc", ".so", ".pth")
#: (the user's folder, the relative paths read) of each user_reads() block, innermost last
_active: list[tuple[str, list[str]]] = []
_installed = False


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if event != "open" or not _active:
        return
    path = opened_for_reading(args)
    if path is None or os.path.isabs(path) or path.endswith(_CODE):
        return
    user, seen = _active[-1]
    frame = sys._getframe(1)
    while frame is not None:  # the innermost of ablagen's frames and the user's
        name = frame.f_code.co_filename
        if name.startswith(_ABLAGEN):
            return  # ablagen's own read (a --dataset file)
        if name.startswith(user):
            seen.append(path)
            return
        frame = frame.f_back


@contextlib.contextmanager
def user_reads(model_file: Path) -> Iterator[list[str]]:
    """The relative paths code in ``model_file``'s folder opens for reading inside
    the block (in order, repeats included)."""
    global _installed
    if not _installed:  # an audit hook stays for the process: one, switched by _active
        sys.addaudithook(_hook)
        _installed = True
    seen: list[str] = []
    _active.append((str(model_file.resolve().parent) + os.sep, seen))
    try:
        yield seen
    finally:
        _active.pop()


def check_reads_from(seen: list[str], model_file: Path, out: Path) -> None:
    """Refuse a file read relative to the working directory that the scripts, run
    from ``out``, would not find at that path."""
    for path in dict.fromkeys(seen):
        if os.path.exists(path) and not (out / path).exists():
            beside = os.path.relpath(os.path.abspath(path), model_file.resolve().parent)
            raise ConfigError(
                f"{model_file.name} reads {path} relative to the working directory "
                f"({Path.cwd()}), but its scripts run from {out}, where there is no "
                f"{path}",
                f"open it relative to the model file (Path(__file__).parent / "
                f"{Path(beside).as_posix()!r}) or by an absolute path",
            )
