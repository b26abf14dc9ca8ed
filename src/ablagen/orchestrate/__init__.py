"""Run a study's scripts (local warm-worker pool or Ray) into a SQLite result store."""
