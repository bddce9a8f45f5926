"""Kernel types (ntk, signgd, asymmetric_signgd) and outputs against brute-force per-example gradients (float64)."""

from __future__ import annotations

import pytest
import torch

from ntk_peft import load_model
from ntk_peft.adapters import parse_spec
from ntk_peft.errors import UserError
from ntk_peft.ntk import capture, empirical_ntk, kernel_blocks, subset_params
from ntk_peft.ntk.capture import Capture, Record
from ntk_peft.ntk.directions import gradient_directions, project_directions, reference_projection
from ntk_peft.ntk.kernel_types import KernelType, output_map
from ntk_peft.ntk.kinds import HeadBias, KernelSum, LinearWeight, subset_kinds
from ntk_peft.tasks import load_split, make_batch
from tests.helpers import brute_force_kernel, per_example_gradients, relative_error

SUBSETS = ["full", "linear", "row1", "col1", "lora2", "cp2", "ia3", "bias", "more2x2"]
MODELS = ["tiny-llama", "tiny-roberta"]
TYPES = ["ntk", "signgd", "asymmetric_signgd"]


@pytest.fixture(scope="module")
def setups():
    out = {}
    train = load_split("sst2").train
    for name in MODELS:
        model, tok = load_model(name, dtype=torch.float64, seed=5)
        out[name] = (model, make_batch(tok, "sst2", train[:3]), make_batch(tok, "sst2", train[30:32]))
    return out


_rel = relative_error


def noise_entries(jac):
    """``[n, O]`` counts of entries that are rounding noise around an exact zero (below 1e-9 of the largest
    entry: e.g. attention key biases, whose gradient vanishes by softmax's shift invariance); their sign is
    arbitrary, in the brute force and in the engine alike."""
    return (jac.abs() <= 1e-9 * jac.abs().amax(-1, keepdim=True)).logical_and(jac != 0).sum(-1)


def assert_sign_kernel_close(got, expected, jac1, jac2, kernel):
    """Equal to 1e-10, except that each noise entry may change a SignGD kernel entry by up to 2."""
    slack = 0.0
    if kernel == "signgd":
        slack = 2.0 * float(noise_entries(jac1).max() + noise_entries(jac2).max())
    assert float((got - expected).abs().max()) <= 1e-10 * float(expected.abs().max()) + slack


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("spec", SUBSETS)
@pytest.mark.parametrize("output", ["labels", "difference"])
def test_every_kernel_type_matches_brute_force_kernel(setups, name, spec, output):
    model, batch1, batch2 = setups[name]
    jac1 = per_example_gradients(model, spec, batch1, output)
    jac2 = per_example_gradients(model, spec, batch2, output)
    for kernel in TYPES:
        expected = brute_force_kernel(jac1, jac2, kernel)
        assert expected.abs().max() > 0
        for implementation in ("fast", "reference"):
            got = empirical_ntk(model, batch1, batch2, [spec], implementation, kernel=kernel, output=output)
            assert got[spec].shape == expected.shape
            assert_sign_kernel_close(got[spec], expected, jac1, jac2, kernel)
            if kernel == "asymmetric_signgd":  # the flipped part: the kernel with batch2 first
                swapped = brute_force_kernel(jac2, jac1, kernel)
                assert_sign_kernel_close(got[spec + "~"].permute(1, 0, 3, 2), swapped, jac2, jac1, kernel)
    if name == "tiny-llama" and output == "labels":  # no biases: no exact zero in rounding noise, no slack
        assert int(noise_entries(jac1).max()) == 0


def test_sign_kernels_differ_from_the_ntk(setups):
    model, batch1, _ = setups["tiny-llama"]
    ntk = empirical_ntk(model, batch1, subsets=["row1"], output="difference")["row1"]
    sign = empirical_ntk(model, batch1, subsets=["row1"], kernel="signgd", output="difference")["row1"]
    assert _rel(sign, ntk) > 0.1
    # the symmetric sign kernel of one batch is symmetric and its diagonal counts the nonzero entries
    flat = sign[..., 0, 0]
    assert torch.equal(flat, flat.T)
    jac = per_example_gradients(model, "row1", batch1, "difference")
    assert torch.equal(torch.diagonal(flat), (jac[:, 0] != 0).sum(1).double())


def test_asymmetric_reduces_to_the_ntk_where_sign_is_a_scaling():
    """Gradients with entries in {0, ±c}: sign(g) = g/c, so ⟨g, sign g'⟩ = K_ntk/c (Linear weights: token Gram
    for the NTK, materialised gradients for the sign side)."""
    generator = torch.Generator().manual_seed(0)
    n, d_in, d_out, classes, scale = 4, 5, 3, 2, 0.37
    linear = torch.nn.Linear(d_in, d_out).double()
    inputs = torch.eye(d_in, dtype=torch.float64)[torch.randint(d_in, (n,), generator=generator)]  # one token each
    grads = scale * torch.randint(-1, 2, (classes, n, d_out), generator=generator).double()
    rec = Record(linear, inputs, grads, torch.arange(n), torch.zeros(n, dtype=torch.long), (n, 1))
    cap = Capture({"layer": rec}, torch.zeros(n, 1), torch.zeros(n, classes), torch.arange(classes))
    kind = LinearWeight("layer", "layer.weight", linear)
    acc = KernelSum(cap, cap, [KernelType.NTK.transforms, KernelType.ASYMMETRIC_SIGNGD.transforms])
    kind.add_kernels(acc, cap, cap)
    ntk, asymmetric = acc.result()
    assert ntk.abs().max() > 0
    assert torch.allclose(asymmetric * scale, ntk, rtol=1e-13, atol=1e-15)


def test_head_bias_sign_kernel_equals_its_ntk(setups):
    """∂f_c/∂b is one-hot at the label word: every kernel type of the output bias is the same."""
    model, batch1, batch2 = setups["tiny-roberta"]
    cap1, cap2 = capture(model, batch1), capture(model, batch2)
    kind = next(k for k in subset_kinds(model, subset_params(model, parse_spec("full")), cap1)
                if isinstance(k, HeadBias))
    acc = KernelSum(cap1, cap2, [KernelType(t).transforms for t in TYPES])
    kind.add_kernels(acc, cap1, cap2)
    ntk, sign, asymmetric = acc.result()
    assert torch.equal(ntk, sign) and torch.equal(ntk, asymmetric)
    assert torch.equal(ntk[0, 0], torch.eye(2, dtype=torch.float64))


@pytest.mark.parametrize(("name", "spec", "output"), [
    ("tiny-llama", "full", "labels"),  # no entry in rounding noise (see noise_entries): signs compare exactly
    *[("tiny-roberta", spec, output) for spec in ("row1", "lora2", "cp2", "ia3") for output in ("labels", "difference")]])
def test_sign_directions_and_projections(setups, name, spec, output):
    """Directions Σ W·sign(g) from per-example gradients, and ⟨T(g(x)), v⟩, against the brute force."""
    model, batch1, batch2 = setups[name]
    sub = subset_params(model, parse_spec(spec))
    jac = per_example_gradients(model, spec, batch1, output)
    assert int(noise_entries(jac).max()) == 0
    weights = torch.randn(jac.shape[0], jac.shape[1], 2, generator=torch.Generator().manual_seed(1),
                          dtype=torch.float64)
    head_map = output_map(output, 2)
    cap1 = capture(model, batch1).with_outputs(head_map)
    cap2 = capture(model, batch2).with_outputs(head_map)
    for transform in (None, torch.sign):
        directions = gradient_directions(model, sub, [cap1], weights, transform)
        flat = torch.cat([directions[n].reshape(2, -1) for n in sub.params], dim=1)
        signed = jac if transform is None else transform(jac)
        assert _rel(flat, torch.einsum("nop,nos->sp", signed, weights)) < 1e-10
        for project_with in (None, torch.sign):
            got = project_directions(model, sub, cap2, directions, project_with)
            expected = reference_projection(sub, batch2, directions, project_with, head_map)
            assert _rel(got, expected) < 1e-10


def test_blocked_asymmetric_kernel_assembles_mirrored_blocks(setups):
    """A symmetric job computes each unordered block pair once; the asymmetric kernel's lower blocks
    come from the stored flipped parts and equal the one-block kernel."""
    model, batch1, batch2 = setups["tiny-llama"]
    train = load_split("sst2").train
    tok = load_model("tiny-llama", dtype=torch.float64, seed=5)[1]
    whole = make_batch(tok, "sst2", train[:5])
    blocks = [make_batch(tok, "sst2", train[:2]), make_batch(tok, "sst2", train[2:5])]
    one = empirical_ntk(model, whole, subsets=["row1"], kernel="asymmetric_signgd", output="difference")
    blocked = kernel_blocks(model, blocks, None, ["row1"], kernel="asymmetric_signgd", output="difference",
                            progress=False)
    assert _rel(blocked["row1"], one["row1"]) < 1e-12
    assert _rel(blocked["row1~"], one["row1~"]) < 1e-12
    assert _rel(one["row1"], one["row1"].permute(1, 0, 3, 2)) > 1e-3  # really not symmetric


def test_bad_kernel_type_and_output(setups):
    model, batch1, _ = setups["tiny-llama"]
    with pytest.raises(UserError, match="unknown kernel type 'adam'; valid: ntk, signgd, asymmetric_signgd"):
        empirical_ntk(model, batch1, subsets=["row1"], kernel="adam")
    with pytest.raises(UserError, match="unknown kernel output"):
        empirical_ntk(model, batch1, subsets=["row1"], output="margin")
    mnli = load_split("mnli").train[:2]
    tok = load_model("tiny-llama", dtype=torch.float64, seed=5)[1]
    with pytest.raises(UserError, match="needs 2 label words, this task has 3"):
        empirical_ntk(model, make_batch(tok, "mnli", mnli), subsets=["row1"], output="difference")
