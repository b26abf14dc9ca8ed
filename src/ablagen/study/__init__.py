"""``ablagen study``, the main job (``pipeline``), and its later stages' options.

Light on purpose: the CLI imports the options dataclasses at start-up and takes its
defaults from their field defaults, so every default is stated once.
"""

from ablagen.study.options import (
    STUDY_MODES,
    STUDY_TRAIN,
    ArmOptions,
    RankOptions,
    StudyOptions,
)

__all__ = ["STUDY_MODES", "STUDY_TRAIN", "ArmOptions", "RankOptions", "StudyOptions"]
