"""ablagen: automated ablation code generation for PyTorch."""

__version__ = "0.1.0"
