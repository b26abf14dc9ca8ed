"""A study's runs in the trackers researchers already use: MLflow and TensorBoard.

Public API::

    from ablagen.track import Target, export_study, LiveTracker

    export_study("studies/digits_cnn", [Target("mlflow"), Target("tensorboard")])
    run_study(study, options, progress=LiveTracker([Target("mlflow")], [study]))

Both need the ``track`` extra (``pip install 'ablagen[track]'``: mlflow-skinny with
SQLAlchemy and alembic for its SQLite store, and tensorboard); without it, a
:class:`~ablagen.core.errors.ConfigError` says so.
"""

from ablagen.track.export_study import (
    TRACKERS,
    ExportEvent,
    ExportSummary,
    LiveTracker,
    Target,
    export_study,
    parse_track,
)
from ablagen.track.runs import Point, TrackedRun, record_metrics, study_runs

__all__ = [
    "TRACKERS",
    "ExportEvent",
    "ExportSummary",
    "LiveTracker",
    "Point",
    "Target",
    "TrackedRun",
    "export_study",
    "parse_track",
    "record_metrics",
    "study_runs",
]
