"""Data sources and tasks, resolved at generate time.

:func:`resolve_data` turns ``--dataset`` and the model file's data functions into the
:class:`~ablagen.generate.context.DataSpec` the scripts are rendered from (reading the
user's folder, CSV or text file once, so the scripts record its classes, columns and
vocabulary); :func:`check_task` runs one batch of that data through the model and
checks the task's loss can take the model's output (:mod:`ablagen.data.tasks`);
:func:`output_access` decides how the scripts pick the prediction out of what the
model returns (:mod:`ablagen.data.outputs`).
"""

from ablagen.data.outputs import OutputAccess, output_access
from ablagen.data.sources import resolve_data, sample_batch
from ablagen.data.tasks import TASKS, Task, check_task

__all__ = [
    "TASKS",
    "OutputAccess",
    "Task",
    "check_task",
    "output_access",
    "resolve_data",
    "sample_batch",
]
