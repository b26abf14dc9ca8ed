"""Learning-rate robustness sweeps: does gradient noise widen the usable lr range?

``ablagen sweep MODEL|STUDY`` renders one script per (arm, sigma, lr) into the
study's ``sweep/`` folder, runs them per seed with the orchestrator and writes
``sweep.json``, ``sweep.png`` and a report section with three figures per arm (LR
window, worst-case drop, seed variance), each with an interval and a paired test
against the plain arm::

    from ablagen.sweep import SweepOptions, run_sweep
    outcome = run_sweep(SweepOptions("studies/digits_cnn", lrs=(1e-3, 1e-2)))
    outcome.result.get("plain").figures["lr_window_decades"].estimate
"""

from ablagen.sweep.analysis import SeriesResult, SweepResult, analyze_sweep
from ablagen.sweep.generate import GeneratedSweep, generate_sweep
from ablagen.sweep.options import (
    ARMS,
    SweepOptions,
    parse_arms,
    parse_floats,
    parse_lrs,
)
from ablagen.sweep.report import (
    study_sweep_sections,
    sweep_section,
    update_report,
)
from ablagen.sweep.run import SweepOutcome, run_sweep

__all__ = [
    "ARMS",
    "GeneratedSweep",
    "SeriesResult",
    "SweepOptions",
    "SweepOutcome",
    "SweepResult",
    "analyze_sweep",
    "generate_sweep",
    "parse_arms",
    "parse_floats",
    "parse_lrs",
    "run_sweep",
    "study_sweep_sections",
    "sweep_section",
    "update_report",
]
