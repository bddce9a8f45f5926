"""Prompt-based fine-tuning with any adapter, with ΔW rank/spectrum tracking."""

from ntk_peft.train.loop import TrainConfig, train
from ntk_peft.train.tracking import DeltaWTracker

__all__ = ["DeltaWTracker", "TrainConfig", "train"]
