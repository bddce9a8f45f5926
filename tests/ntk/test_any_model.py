"""Kernels of any nn.Module through an output function: an MLP, a tiny ViT-like model and a tiny
RobertaForSequenceClassification, every subset and implementation against brute-force per-example gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ntk_peft.adapters import parse_spec
from ntk_peft.errors import UserError
from ntk_peft.ntk import empirical_ntk, subset_params
from ntk_peft.ntk.capture import capture
from ntk_peft.ntk.directions import project_directions, reference_projection, subset_directions
from ntk_peft.ntk.outputs import sequence_logits
from tests.helpers import brute_force_kernel, per_example_gradients, relative_error

SUBSETS = ["full", "linear", "row1", "col1", "lora1"]


def mlp_outputs(model, batch):
    return model(batch["x"])


class TinyViT(nn.Module):
    """Patches by a strided convolution, a learned position embedding (a bare parameter of this module),
    pre-norm residual MLP blocks over the patch tokens, mean pooling and a classifier."""

    def __init__(self, width=6, classes=3):
        super().__init__()
        self.patches = nn.Conv2d(3, width, kernel_size=2, stride=2)
        self.position = nn.Parameter(0.1 * torch.randn(4, width))
        self.blocks = nn.ModuleList(nn.ModuleDict({"norm": nn.LayerNorm(width), "up": nn.Linear(width, 2 * width),
                                                   "down": nn.Linear(2 * width, width)}) for _ in range(2))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, images):
        tokens = self.patches(images).flatten(2).transpose(1, 2) + self.position  # [B, 4, width]
        for block in self.blocks:
            tokens = tokens + block["down"](torch.nn.functional.gelu(block["up"](block["norm"](tokens))))
        return self.head(self.norm(tokens).mean(1))


def vit_outputs(model, batch):
    return model(batch["images"])


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.LayerNorm(6), nn.Linear(6, 3)).double()
    vit = TinyViT().double()
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=24, max_position_embeddings=20, num_labels=2, pad_token_id=1,
                           attn_implementation="eager")
    roberta = RobertaForSequenceClassification(config).double().eval()
    generator = torch.Generator().manual_seed(1)

    def text_batch(n, length):
        ids = torch.randint(3, 40, (n, length), generator=generator)
        mask = torch.ones(n, length, dtype=torch.long)
        mask[0, -2:] = 0  # padding on the right of the first example
        ids[0, -2:] = 1
        ids[:, 0] = 0  # <s>
        return {"input_ids": ids, "attention_mask": mask}

    return {
        "mlp": (mlp, mlp_outputs, {"x": torch.randn(3, 5, dtype=torch.float64, generator=generator)},
                {"x": torch.randn(2, 5, dtype=torch.float64, generator=generator)}),
        "vit": (vit, vit_outputs, {"images": torch.randn(3, 3, 4, 4, dtype=torch.float64, generator=generator)},
                {"images": torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=generator)}),
        "roberta": (roberta, sequence_logits, text_batch(3, 7), text_batch(2, 5)),
    }


@pytest.mark.parametrize("name", ["mlp", "vit", "roberta"])
@pytest.mark.parametrize("spec", SUBSETS)
def test_any_model_matches_brute_force(models, name, spec):
    model, outputs, batch1, batch2 = models[name]
    jac1 = per_example_gradients(model, spec, batch1, outputs=outputs)
    jac2 = per_example_gradients(model, spec, batch2, outputs=outputs)
    kernels = ["ntk"] if name == "roberta" else ["ntk", "signgd", "asymmetric_signgd"]  # attention: sign noise
    for kernel in kernels:
        expected = brute_force_kernel(jac1, jac2, kernel)
        assert expected.abs().max() > 0
        for implementation in ("fast", "reference"):
            got = empirical_ntk(model, batch1, batch2, [spec], implementation, kernel=kernel, outputs=outputs)[spec]
            assert relative_error(got, expected) < 1e-10, (kernel, implementation)


@pytest.mark.parametrize("name", ["mlp", "vit", "roberta"])
def test_projections_of_any_model(models, name):
    model, outputs, batch1, batch2 = models[name]
    for spec in ("full", "lora1"):
        sub = subset_params(model, parse_spec(spec))
        weights = torch.randn(3, 3 if name != "roberta" else 2, 2, dtype=torch.float64,
                              generator=torch.Generator().manual_seed(2))
        directions = subset_directions(sub, [batch1], weights, outputs=outputs)
        got = project_directions(model, sub, capture(sub.model, batch2, outputs=outputs), directions)
        expected = reference_projection(sub, batch2, directions, outputs=outputs)
        assert relative_error(got, expected) < 1e-10


def test_targets_on_a_model_without_blocks_and_outside_them(models):
    mlp = models["mlp"][0]
    assert list(subset_params(mlp, parse_spec("row1")).params) == ["0.delta", "2.delta", "4.delta"]
    assert list(subset_params(mlp, parse_spec("lora1"), targets="4").params) == ["4.A", "4.B"]
    vit = models["vit"][0]
    assert len(subset_params(vit, parse_spec("row1")).params) == 4  # up and down of both blocks
    assert list(subset_params(vit, parse_spec("row1"), targets="head").params) == ["head.delta"]
    with pytest.raises(UserError, match="LoRTA needs the attention head size"):
        subset_params(mlp, parse_spec("cp2"), targets="*")


def test_bad_output_functions_are_one_line(models):
    mlp, _, batch1, _ = models["mlp"]
    with pytest.raises(UserError, match=r"must return \[B, C\] = \[3, C\] outputs, got \(3,\)"):
        empirical_ntk(mlp, batch1, subsets=["full"], outputs=lambda m, b: m(b["x"]).sum(1))
    with pytest.raises(UserError, match="does not know the LM head of Sequential"):
        empirical_ntk(mlp, batch1, subsets=["full"])


def test_full_kernel_of_an_mlp_equals_nngeometry_gram_matrix():
    """nngeometry (Jacobians by its own hooks, George et al.) gives the Gram matrix G[c, i, d, j] of an MLP."""
    from nngeometry.backend import TorchHooksJacobianBackend
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(3)
    mlp = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(7, 4, dtype=torch.float64)
    gram = TorchHooksJacobianBackend(model=mlp).get_gram_matrix(DataLoader(TensorDataset(x), batch_size=3))
    ours = empirical_ntk(mlp, {"x": x}, subsets=["full"], outputs=mlp_outputs)["full"]  # [n, n, C, C]
    expected = gram.permute(1, 3, 0, 2)
    assert relative_error(ours, expected) < 1e-12
