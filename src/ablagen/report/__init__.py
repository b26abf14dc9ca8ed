"""Report: what a study writes for people, ``report.md`` with its plots and ``report.html``."""
