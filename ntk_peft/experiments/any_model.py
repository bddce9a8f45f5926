"""The `ntk-compare` question for any model from Python: does a subset's kernel classify like the full one?

`compare_subsets(model, train, y_train, evaluation, y_eval, subsets, outputs=...)`
computes each kernel type's train, (dev) and evaluation kernels of ``full``
and each subset of an arbitrary module (an output function gives f, see
`ntk_peft.ntk.outputs`), fits a solver per kernel with λ picked on the dev set
(or λ = 1e-3 of the kernel's scale without one), offsets predictions by the
model's own outputs f0 (as LM-Kernel-FT), and reports accuracies and the
RoCoFT relative kernel differences. Kernels are computed in memory, in blocks
of ``block_size`` examples; for a study over many seeds use `ntk-compare`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ntk_peft.analysis import relative_difference
from ntk_peft.errors import UserError
from ntk_peft.ntk import kernel_blocks
from ntk_peft.ntk.kernel_types import KernelType
from ntk_peft.ntk.outputs import batch_size, model_outputs
from ntk_peft.solvers import kernel_scale, make_solver, select_lambda
from ntk_peft.tasks import slice_batch


def _blocks(batch: dict, size: int) -> list[dict]:
    n = batch_size(batch)
    return [slice_batch(batch, list(range(start, min(start + size, n)))) for start in range(0, n, size)]


@torch.no_grad()
def _f0(model: nn.Module, batch: dict, outputs) -> np.ndarray:
    return model_outputs(model, batch, outputs).double().cpu().numpy()


def compare_subsets(model: nn.Module, train: dict, y_train, evaluation: dict, y_eval, subsets=("row1",), *,
                    outputs=None, dev: dict | None = None, y_dev=None, kernels=("ntk",), solver: str = "klr",
                    lam: float | None = None, offset: bool = True, targets="all", seed: int = 0,
                    block_size: int = 16) -> dict:
    """Accuracy of kernel models of ``full`` and each subset, and their kernels' distance from ``full``'s.

    Args:
        model: any module (with ``outputs``) or a Hugging Face LM (prompt batches).
        train, evaluation, dev: batches (dicts of tensors, one row per example).
        y_train, y_eval, y_dev: class indices ``[n]``.
        subsets: subset specs besides ``full``.
        outputs: the output function ``outputs(model, batch) -> [B, C]``; None: label-word logits.
        kernels: kernel types (``ntk``, ``signgd``, ``asymmetric_signgd``; sign kernels of a two-class
            output are of the logit difference, the asymmetric one is solved by AsK-LS).
        solver, lam, offset: as `ntk-compare` (``--solver``, ``--lambda``, ``--no-offset``).
        targets, seed: the subsets' targets and initialisation seed.

    Returns:
        ``{"accuracy": {name: float}, "relative_difference": {name: {"p1", "p2"}}, "lambda": {name: float},
        "f0_accuracy": float}`` with names ``<subset>`` for the NTK and ``<type>:<subset>`` otherwise.
    """
    if (dev is None) != (y_dev is None):
        raise UserError("give both dev and y_dev, or neither")
    names = ["full", *[s for s in subsets if s != "full"]]
    y_train, y_eval = np.asarray(y_train), np.asarray(y_eval)
    parts = {"train": _blocks(train, block_size), "eval": _blocks(evaluation, block_size)}
    f0 = {"train": _f0(model, train, outputs), "eval": _f0(model, evaluation, outputs)}
    if dev is not None:
        parts["dev"], f0["dev"], y_dev = _blocks(dev, block_size), _f0(model, dev, outputs), np.asarray(y_dev)
    classes = f0["train"].shape[1]
    offsets = f0 if offset else {k: None for k in f0}
    common = dict(subsets=names, targets=targets, seed=seed, outputs=outputs, progress=False)
    result = {"accuracy": {}, "relative_difference": {}, "lambda": {},
              "f0_accuracy": float(np.mean(f0["eval"].argmax(1) == y_eval))}
    for kernel in dict.fromkeys(KernelType.parse(k) for k in kernels):
        if kernel is KernelType.ASYMMETRIC_SIGNGD and classes != 2:
            raise UserError(f"the asymmetric SignGD kernel's solver (AsK-LS) is for two classes; the outputs have "
                            f"{classes}")
        output = "difference" if kernel is not KernelType.NTK and classes == 2 else "labels"
        chosen_solver = "lssvm" if kernel is KernelType.ASYMMETRIC_SIGNGD else solver
        typed = dict(common, kernel=kernel, output=output)
        train_kernels = kernel_blocks(model, parts["train"], None, **typed)
        cross = {part: kernel_blocks(model, parts["train"], parts[part], **typed) for part in parts if part != "train"}
        for name in names:
            key = name if kernel is KernelType.NTK else f"{kernel.value}:{name}"
            k_train = train_kernels[name].numpy()

            def against(part, name=name):
                """K(part, train) ``[m, n, O, O]`` and, for the asymmetric kernel, K(train, part) ``[n, m]``."""
                blocks = cross[part]
                if kernel.symmetric:
                    return blocks[name].permute(1, 0, 3, 2).numpy(), {}
                return (blocks[name + "~"].permute(1, 0, 3, 2).numpy(),
                        {"flipped": blocks[name][..., 0, 0].numpy()})

            chosen = lam
            if chosen is None and dev is not None:
                k_dev, extra = against("dev")
                chosen, _ = select_lambda(chosen_solver, k_train, y_train, k_dev, y_dev, offsets["train"],
                                          offsets["dev"], flipped=extra.get("flipped"))
            elif chosen is None:
                chosen = 1e-3 * kernel_scale(k_train)
            model_fit = make_solver(chosen_solver, chosen).fit(k_train, y_train, offsets["train"])
            k_eval, extra = against("eval")
            predicted = model_fit.predict(k_eval, offsets["eval"], **extra)
            result["accuracy"][key] = float(np.mean(predicted == y_eval))
            result["lambda"][key] = float(chosen)
            if name != "full":
                full = train_kernels["full"].numpy()
                result["relative_difference"][key] = {"p1": relative_difference(k_train, full, 1),
                                                      "p2": relative_difference(k_train, full, 2)}
    return result
