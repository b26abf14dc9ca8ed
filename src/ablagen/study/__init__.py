"""The options of the study's later stages (rank, arms, the whole study).

Light on purpose: the CLI imports these dataclasses at start-up and takes its
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
