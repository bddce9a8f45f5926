"""compare_subsets: the ntk-compare question on any module from Python."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ntk_peft.errors import UserError
from ntk_peft.experiments.any_model import compare_subsets
from ntk_peft.ntk import empirical_ntk
from ntk_peft.solvers import make_solver


def _blobs(n, classes, generator):
    """Gaussian blobs around well-separated centres in 4 dimensions."""
    centres = 3.0 * torch.eye(4, dtype=torch.float64)[:classes]
    y = torch.arange(n) % classes
    return centres[y] + 0.5 * torch.randn(n, 4, dtype=torch.float64, generator=generator), y.numpy()


def _outputs(model, batch):
    return model(batch["x"])


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2)).double()


def test_kernel_models_of_an_mlp_separate_blobs_and_match_a_direct_fit(mlp):
    g = torch.Generator().manual_seed(1)
    (x_train, y_train), (x_dev, y_dev), (x_eval, y_eval) = (_blobs(n, 2, g) for n in (20, 10, 40))
    result = compare_subsets(mlp, {"x": x_train}, y_train, {"x": x_eval}, y_eval, ["row1", "lora1"],
                             outputs=_outputs, dev={"x": x_dev}, y_dev=y_dev,
                             kernels=["ntk", "signgd", "asymmetric_signgd"], block_size=8)
    assert set(result["accuracy"]) == {f"{p}{s}" for p in ("", "signgd:", "asymmetric_signgd:")
                                       for s in ("full", "row1", "lora1")}
    assert result["accuracy"]["full"] >= max(0.9, result["f0_accuracy"])  # separable blobs; f0 alone: 0.925
    assert set(result["relative_difference"]) == {"row1", "lora1", "signgd:row1", "signgd:lora1",
                                                  "asymmetric_signgd:row1", "asymmetric_signgd:lora1"}
    # the NTK full model equals KLR fitted directly on empirical_ntk's kernels with the chosen λ
    with torch.no_grad():
        f0_train, f0_eval = mlp(x_train).numpy(), mlp(x_eval).numpy()
    k_train = empirical_ntk(mlp, {"x": x_train}, subsets=["full"], outputs=_outputs)["full"].numpy()
    k_eval = empirical_ntk(mlp, {"x": x_eval}, {"x": x_train}, subsets=["full"], outputs=_outputs)["full"].numpy()
    direct = make_solver("klr", result["lambda"]["full"]).fit(k_train, y_train, f0_train)
    assert result["accuracy"]["full"] == float(np.mean(direct.predict(k_eval, f0_eval) == y_eval))


def test_three_classes_and_bad_arguments():
    torch.manual_seed(2)
    mlp3 = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    g = torch.Generator().manual_seed(3)
    (x, y), (x_eval, y_eval) = _blobs(12, 3, g), _blobs(9, 3, g)
    result = compare_subsets(mlp3, {"x": x}, y, {"x": x_eval}, y_eval, ["col1"], outputs=_outputs,
                             kernels=["ntk", "signgd"])
    assert set(result["accuracy"]) == {"full", "col1", "signgd:full", "signgd:col1"}
    with pytest.raises(UserError, match="AsK-LS\\) is for two classes; the outputs have 3"):
        compare_subsets(mlp3, {"x": x}, y, {"x": x_eval}, y_eval, outputs=_outputs, kernels=["asymmetric_signgd"])
    with pytest.raises(UserError, match="give both dev and y_dev"):
        compare_subsets(mlp3, {"x": x}, y, {"x": x_eval}, y_eval, outputs=_outputs, dev={"x": x})
