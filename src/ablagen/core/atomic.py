"""File writes that fail as data: atomic replacement, and I/O faults as one line.

A reader sees the old file or the new one, never half of one
(:func:`atomic_write_bytes`). A write that fails because the disk is full, the
path is not writable or the filesystem is read-only raises :class:`WriteError`
(an :class:`~ablagen.core.errors.OutputError`: one line, exit 2) naming the path and
the fix, instead of an ``OSError`` traceback (:func:`writing`, :func:`io_error`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ablagen.core.errors import OutputError

#: errno values that mean "no room": the disk, or the user's quota
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EACCES, errno.EPERM)


class WriteError(OutputError):
    """Something could not be written (full disk, permissions, read-only filesystem).

    ``errno`` is the OS error number when known, so callers can tell a full disk
    (:attr:`no_space`) from a permission problem.
    """

    def __init__(self, problem: str, fix: str | None = None, code: int | None = None):
        super().__init__(problem, fix)
        self.errno = code

    @property
    def no_space(self) -> bool:
        return self.errno in NO_SPACE


def _folder(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def io_fix(code: int | None, path: str | os.PathLike[str]) -> str:
    """The remedy for an OS error number while writing ``path``."""
    folder = _folder(Path(path))
    if code in NO_SPACE:
        return (
            f"free space on the disk holding {folder} (`df -h {folder}`), then run the"
            " same command again: what was stored is kept"
        )
    if code in NOT_WRITABLE:
        return (
            f"make {folder} writable for this user (`ls -ld {folder}`), then run again"
        )
    if code == errno.EROFS:
        return (
            f"the filesystem holding {folder} is read-only: remount it read-write or"
            " copy the study to a writable disk"
        )
    return f"check the disk holding {folder}, then run again"


def io_error(exc: OSError, path: str | os.PathLike[str], what: str = "") -> WriteError:
    """``exc`` (raised while writing ``path``) as a one-line :class:`WriteError`."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    label = f"{what} {path}" if what else str(path)
    return WriteError(
        f"cannot write {label} ({reason})", io_fix(exc.errno, path), exc.errno
    )


@contextmanager
def writing(path: str | os.PathLike[str], what: str = "") -> Iterator[None]:
    """Turn an ``OSError`` raised inside the block into a :class:`WriteError` on ``path``."""
    try:
        yield
    except OSError as exc:
        raise io_error(exc, path, what) from exc


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, what: str = ""
) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and a rename.

    A failure (full disk, permissions) leaves the old file as it was and raises
    :class:`WriteError`.
    """
    path = Path(path)
    with writing(path, what):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
        )
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_text(path: str | os.PathLike[str], text: str, what: str = "") -> None:
    atomic_write_bytes(path, text.encode("utf-8"), what)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    return sha256_bytes(Path(path).read_bytes())
