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

import importlib

#: public name -> the submodule that defines it; imported on first use, so that the
#: CLI (which needs only the options) does not load torch to start
_WHERE = {
    "SeriesResult": "analysis",
    "SweepResult": "analysis",
    "analyze_sweep": "analysis",
    "GeneratedSweep": "scripts",
    "generate_sweep": "scripts",
    "ARMS": "config",
    "SweepOptions": "config",
    "parse_arms": "config",
    "parse_floats": "config",
    "parse_lrs": "config",
    "study_sweep_sections": "summary",
    "sweep_section": "summary",
    "update_report": "summary",
    "SweepOutcome": "driver",
    "run_sweep": "driver",
}


def __getattr__(name: str) -> object:
    if name not in _WHERE:
        raise AttributeError(f"module 'ablagen.sweep' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ablagen.sweep.{_WHERE[name]}"), name)


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
