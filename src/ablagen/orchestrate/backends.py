"""Execution backends: a small interface and a registry.

A backend runs :class:`RunSpec` s and reports each as a :class:`RawOutcome`; the
runner owns the store, the progress and the statuses (:func:`.outcome.classify`).
A backend is built by a factory ``(study_dir, options, tmp_dir, scripts) ->
Backend``; the factory must fail fast with a :class:`~ablagen.core.errors.BackendError`
when the backend cannot work (missing package), before anything is started.
``__enter__`` starts it (processes, cluster connection), ``close`` stops it and
any run still in flight. Register a new one with :func:`register_backend`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ablagen.core.errors import ConfigError
from ablagen.orchestrate.options import RunOptions, RunSpec
from ablagen.orchestrate.outcome import RawOutcome


class Backend(Protocol):
    name: str

    @property
    def capacity(self) -> int:
        """How many runs may be in flight at once (valid after ``__enter__``)."""

    def describe(self) -> str:
        """One human line: where and how runs execute."""

    def __enter__(self) -> Backend: ...

    def __exit__(self, *exc: object) -> None: ...

    def submit(self, spec: RunSpec) -> None:
        """Start a run; must not block on its completion."""

    def next_done(self, timeout: float | None = None) -> RawOutcome | None:
        """Block until some submitted run finishes and return it; None if
        ``timeout`` seconds pass first (``None``: wait as long as it takes)."""

    def close(self) -> None:
        """Stop everything, killing runs still in flight. Idempotent."""


BackendFactory = Callable[[Path, RunOptions, Path, list[Path]], Backend]

_BACKENDS: dict[str, BackendFactory] = {}


def register_backend(name: str, factory: BackendFactory) -> None:
    _BACKENDS[name] = factory


def backend_names() -> tuple[str, ...]:
    return tuple(sorted(_BACKENDS))


def get_backend(name: str) -> BackendFactory:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ConfigError(
            f"unknown backend {name!r}",
            f"pass --backend {' or '.join(backend_names())}",
        ) from None


def _local(study: Path, options: RunOptions, tmp: Path, scripts: list[Path]) -> Backend:
    from ablagen.orchestrate.local import LocalBackend

    return LocalBackend(study, options, tmp, scripts)


def _ray(study: Path, options: RunOptions, tmp: Path, scripts: list[Path]) -> Backend:
    from ablagen.orchestrate.ray_backend import RayBackend

    return RayBackend(study, options, tmp, scripts)


register_backend("local", _local)
register_backend("ray", _ray)
