import torch
import not_a_real_package_xyz  # noqa: F401
