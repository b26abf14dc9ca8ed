"""CUDA checks: python -m pytest -q tests/gpu (skipped without CUDA)."""
