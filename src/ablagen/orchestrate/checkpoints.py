"""Mid-run checkpoints of a study's runs: which scripts take one, where it lives, what
``ablagen status`` says about it, and when it goes away.

A generated script of 3 or more epochs takes ``--resume-from FILE``: it resumes from
FILE when it exists and rewrites it atomically every ``--checkpoint-every`` epochs,
with a small JSON note beside it (``FILE.json``: ``{"epoch", "variant", "seed"}``)
so the epoch can be read without loading the checkpoint. Whether a script takes the
flag is read off its text at plan time (it declares ``"--resume-from"``): custom
templates that add the flag get checkpoints too, older scripts simply run without.

Every run of such a script gets its own file::

    runs/<script stem>/seed<S>__<args8>__<sha8>.pt

``args8`` is the hash of the run arguments (as in the log's name: a run with other
``--epochs`` never resumes this one) and ``sha8`` the script's own hash: a
regenerated script never resumes an older script's checkpoint; such stale files are
counted by ``ablagen status`` and removed when the run of the new script finishes.
A finished run (ok) deletes its checkpoint (the script does, and the orchestrator
makes sure) unless ``--keep-checkpoints``; a failed, crashed or killed run keeps it,
so the next ``ablagen run`` (``--retry-failed`` for the failed ones) resumes it.

A checkpoint has one user at a time: the run's process takes an exclusive POSIX
lock (``lockf``) on ``FILE.lock`` before the script starts and holds it until it
ends (see :mod:`.worker`); a second run of the same file waits.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ablagen.orchestrate.options import RunOptions, RunSpec, args_hash8

RUNS_DIR = "runs"
RESUME_FLAG = b'"--resume-from"'
NOTE_SUFFIX = ".json"  # the script's note beside the checkpoint
LOCK_SUFFIX = ".lock"  # held (lockf) by the run process using the checkpoint
_NAME = re.compile(r"^seed(\d+)__([0-9a-f]{8})__([0-9a-f]{8})\.pt$")


def takes_checkpoints(script: Path) -> bool:
    """Whether the script declares ``--resume-from`` (read at plan time)."""
    try:
        return RESUME_FLAG in script.read_bytes()
    except OSError:
        return False


def checkpoint_path(spec: RunSpec) -> str:
    """``runs/<stem>/seed<S>__<args8>__<sha8>.pt``, relative to the study directory."""
    stem = Path(spec.script).stem
    name = f"seed{spec.seed}__{args_hash8(spec.args)}__{spec.script_sha256[:8]}.pt"
    return f"{RUNS_DIR}/{stem}/{name}"


def lock_path(path: str) -> str:
    """The file a run holds (``lockf``) while it uses checkpoint ``path``."""
    return path + LOCK_SUFFIX


def checkpoint_argv(path: str, options: RunOptions) -> tuple[str, ...]:
    """The script flags of a checkpointed run (not part of the run's key: they change
    when progress is saved, never the metrics)."""
    argv: tuple[str, ...] = ("--resume-from", path)
    if options.checkpoint_every is not None:
        argv += ("--checkpoint-every", str(options.checkpoint_every))
    if options.restart:
        argv += ("--restart",)
    return argv


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint file under ``runs/`` and what its name and note say."""

    path: str  # relative to the study directory
    stem: str
    seed: int
    args8: str
    sha8: str
    bytes: int
    epoch: int | None  # None: no readable note beside it


def _epoch(note: str | None) -> int | None:
    try:
        epoch = json.loads(note or "").get("epoch")
    except (ValueError, AttributeError):
        return None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def named(path: str, size: int, note: str | None) -> Checkpoint | None:
    """The checkpoint at ``path`` (``runs/<stem>/<name>``, relative to the study),
    of ``size`` bytes with its note, from its name and note text; None for a file
    of another name. (Where it lies -- the study, ``--storage`` -- is the caller's.)"""
    parts = path.split("/")
    match = _NAME.match(parts[-1])
    if match is None or len(parts) != 3 or parts[0] != RUNS_DIR:
        return None
    return Checkpoint(
        path=path,
        stem=parts[1],
        seed=int(match[1]),
        args8=match[2],
        sha8=match[3],
        bytes=size,
        epoch=_epoch(note),
    )


def scan(study: Path) -> list[Checkpoint]:
    """Every checkpoint under ``study/runs`` (files of other names are ignored)."""
    found = []
    for path in sorted((study / RUNS_DIR).glob("*/*.pt")):
        try:
            size = path.stat().st_size
        except OSError:  # removed meanwhile
            continue
        note = path.parent / (path.name + NOTE_SUFFIX)
        text = None
        with contextlib.suppress(OSError):
            size += note.stat().st_size
            text = note.read_text()
        ckpt = named(path.relative_to(study).as_posix(), size, text)
        if ckpt is not None:
            found.append(ckpt)
    return found


def remove(study: Path, path: str) -> None:
    """Delete a checkpoint, its note and its lock file (the checkpoint first: a note
    alone is inert; the lock's last user has ended when the orchestrator calls this)."""
    for name in (path, path + NOTE_SUFFIX, lock_path(path)):
        with contextlib.suppress(OSError):
            (study / name).unlink()


def finished(study: Path, spec: RunSpec) -> None:
    """After an ok run: its checkpoint, and older scripts' ones for its seed, go."""
    if spec.checkpoint is None:
        return
    remove(study, spec.checkpoint)
    stem = Path(spec.script).stem
    for old in scan(study):
        if (old.stem, old.seed) == (stem, spec.seed) and old.sha8 != (
            spec.script_sha256[:8]
        ):
            remove(study, old.path)
