"""Scoring a seed's eval predictions: its accuracy, and the confusion counts kept beside it in the record."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix


def score_predictions(fit, key: str, predicted: np.ndarray) -> float:
    """Accuracy of ``predicted`` (``[n_eval]`` class indices, eval in data order) on ``fit``'s evaluation
    set; the ``[C, C]`` counts (rows the true class, columns the predicted) go to
    ``fit.result["eval_confusion"][key]``, so a skewed evaluation set's per-class behaviour is on record."""
    labels = np.array([e.label for e in fit.plan.evaluation])
    classes = int(fit.f0["eval"].shape[1])
    counts = confusion_matrix(labels, np.asarray(predicted), labels=list(range(classes)))
    fit.result.setdefault("eval_confusion", {})[key] = counts.tolist()
    return float(np.mean(np.asarray(predicted) == labels))
