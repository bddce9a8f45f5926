"""Predictors on label logits and kernels: zero-shot now; KLR, KRR and SVM with the ntk-compare issue."""

from ntk_peft.solvers.zeroshot import accuracy, predict_logits

__all__ = ["accuracy", "predict_logits"]
