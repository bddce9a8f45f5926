"""Predictors on label logits and eNTK kernels.

Zero-shot (argmax of the pretrained label logits), kernel logistic
regression (``klr``), kernel ridge (``krr``) and SVM (``svm``) behind one
scikit-learn compatible interface, and the asymmetric LS-SVM (AsK-LS) for
asymmetric kernels such as LM-Kernel-FT's asymmetric SignGD kernel.
"""

from ntk_peft.solvers.asymmetric import AsymmetricLSSVM
from ntk_peft.solvers.estimators import (
    LAMBDA_GRID,
    SOLVERS,
    KernelLogisticRegression,
    KernelRidgeClassifier,
    KernelSVMClassifier,
    best_lambda,
    kernel_scale,
    lambda_grid,
    make_solver,
    select_lambda,
)
from ntk_peft.solvers.klr import binary_kernel, fit_klr, flat_kernel, klr_logits
from ntk_peft.solvers.zeroshot import accuracy, predict_logits

__all__ = [
    "LAMBDA_GRID",
    "SOLVERS",
    "AsymmetricLSSVM",
    "KernelLogisticRegression",
    "KernelRidgeClassifier",
    "KernelSVMClassifier",
    "accuracy",
    "best_lambda",
    "binary_kernel",
    "fit_klr",
    "flat_kernel",
    "kernel_scale",
    "klr_logits",
    "lambda_grid",
    "make_solver",
    "predict_logits",
    "select_lambda",
]
