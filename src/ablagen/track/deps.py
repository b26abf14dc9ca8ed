"""The optional tracker packages: import them, or say which ``pip install`` fixes it."""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

from ablagen.core.errors import ConfigError, OutputError

INSTALL = "install it with `pip install 'ablagen[track]'`"


def require_mlflow() -> ModuleType:
    """``mlflow`` (the ``mlflow-skinny`` package will do), or a one-line error."""
    try:
        import mlflow
    except ImportError:
        raise ConfigError("mlflow is not installed", INSTALL) from None
    return mlflow


def require_sqlite_store() -> None:
    """SQLAlchemy and alembic, which MLflow's SQLite store needs (``mlflow-skinny``
    leaves them out; the ``track`` extra brings them), or a one-line error."""
    try:
        import sqlalchemy  # noqa: F401
        import alembic  # noqa: F401
    except ImportError as exc:
        package = (exc.name or "sqlalchemy").split(".")[0]
        raise ConfigError(
            f"MLflow's SQLite store needs {package}, which is not installed",
            f"{INSTALL}, or pass a tracking server's URI to --mlflow",
        ) from None


def require_tensorboard() -> type:
    """``torch.utils.tensorboard.SummaryWriter`` (needs ``tensorboard``), or an error."""
    try:
        import tensorboard  # noqa: F401  (torch's writer needs it; say so first)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("tensorboard is not installed", INSTALL) from None
    return SummaryWriter


def writable_dir(path: Path, what: str) -> Path:
    """Create ``path`` (and parents) and prove a file can be written there."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".ablagen-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"cannot write the {what} {str(path)!r} ({exc.strerror or exc})",
            "pass a writable location",
        ) from None
    return path
