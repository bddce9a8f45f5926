"""eNTK: every subset, every implementation, against brute-force autograd kernels (float64)."""

from __future__ import annotations

import pytest
import torch

from ntk_peft import label_logits, load_model
from ntk_peft.adapters import parse_spec
from ntk_peft.errors import UserError
from ntk_peft.ntk import NtkImplementation, empirical_ntk, subset_params
from ntk_peft.tasks import load_split, make_batch, slice_batch
from tests.helpers import ENGINE_MODELS as MODELS
from tests.helpers import ENGINE_SUBSETS as SUBSETS


@pytest.fixture(scope="module")
def setups():
    """name -> (model, batch1 [3 SST-2], batch2 [2 MNLI-length SST-2 examples])."""
    out = {}
    train = load_split("sst2").train
    for name in MODELS:
        model, tok = load_model(name, dtype=torch.float64, seed=2)
        out[name] = (model, make_batch(tok, "sst2", train[:3]), make_batch(tok, "sst2", train[20:22]))
    return out


def brute_force_kernel(model, spec, batch1, batch2):
    """Per-example torch.autograd.grad of each label logit w.r.t. the subset, flattened and dotted."""
    sub = subset_params(model, parse_spec(spec))
    params = list(sub.params.values())

    def grads(batch):
        rows = []
        for i in range(batch["input_ids"].shape[0]):
            logits = label_logits(sub.model, slice_batch(batch, [i]))[0]
            per_class = []
            for c in range(logits.shape[0]):
                g = torch.autograd.grad(logits[c], params, retain_graph=True, allow_unused=True)
                per_class.append(torch.cat([torch.zeros(p.numel(), dtype=torch.float64) if x is None
                                            else x.reshape(-1) for p, x in zip(params, g)]))
            rows.append(torch.stack(per_class))
        return torch.stack(rows)

    j1, j2 = grads(batch1), grads(batch2)
    return torch.einsum("icp,jdp->ijcd", j1, j2)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("spec", SUBSETS)
def test_every_implementation_matches_brute_force(setups, name, spec):
    model, batch1, batch2 = setups[name]
    expected = brute_force_kernel(model, spec, batch1, batch2)
    assert expected.abs().max() > 0
    for implementation in NtkImplementation:
        got = empirical_ntk(model, batch1, batch2, subsets=[spec], implementation=implementation)[spec]
        assert got.shape == (3, 2, 2, 2) and got.dtype == torch.float64
        assert _rel(got, expected) < 1e-10, implementation


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("method", ["gram", "reduced", "materialise"])
def test_both_linear_contractions_agree(setups, name, method):
    model, batch1, batch2 = setups[name]
    auto = empirical_ntk(model, batch1, batch2, subsets=["full", "linear"])
    forced = empirical_ntk(model, batch1, batch2, subsets=["full", "linear"], linear_method=method)
    for key in auto:
        assert _rel(forced[key], auto[key]) < 1e-12


@pytest.mark.parametrize("name", MODELS)
def test_invariances_symmetry_and_psd(name):
    model, tok = load_model(name, dtype=torch.float64, seed=2)
    examples = load_split("mnli").train[:5]
    subsets = ["full", "row1", "lora1"]
    whole = empirical_ntk(model, make_batch(tok, "mnli", examples, padding_side="right"), subsets=subsets)
    left = empirical_ntk(model, make_batch(tok, "mnli", examples, padding_side="left"), subsets=subsets)
    order = [3, 0, 4, 1, 2]
    shuffled = empirical_ntk(model, make_batch(tok, "mnli", [examples[i] for i in order]), subsets=subsets)
    first, rest = make_batch(tok, "mnli", examples[:2]), make_batch(tok, "mnli", examples[2:])
    blocks = {k: empirical_ntk(model, a, b, subsets=subsets)
              for k, (a, b) in {"aa": (first, None), "ab": (first, rest), "bb": (rest, None)}.items()}
    for key, kernel in whole.items():
        assert _rel(left[key], kernel) < 1e-12
        assert _rel(shuffled[key], kernel[order][:, order]) < 1e-12
        assembled = torch.zeros_like(kernel)
        assembled[:2, :2], assembled[:2, 2:], assembled[2:, 2:] = (blocks["aa"][key], blocks["ab"][key],
                                                                    blocks["bb"][key])
        assembled[2:, :2] = blocks["ab"][key].permute(1, 0, 3, 2)
        assert _rel(assembled, kernel) < 1e-12
        flat = kernel.permute(0, 2, 1, 3).reshape(15, 15)
        assert _rel(flat, flat.T) < 1e-14
        eigenvalues = torch.linalg.eigvalsh((flat + flat.T) / 2)
        assert eigenvalues.min() >= -1e-10 * eigenvalues.max()


def test_identities(setups):
    model, batch1, batch2 = setups["tiny-llama"]
    parts = [empirical_ntk(model, batch1, batch2, subsets=["linear"], targets=t)["linear"] for t in ("attn", "mlp")]
    union = empirical_ntk(model, batch1, batch2, subsets=["linear"])["linear"]
    assert _rel(parts[0] + parts[1], union) < 1e-12
    # LoRA at initialisation: the A part is exactly zero, so the kernel is the B kernel.
    sub = subset_params(model, parse_spec("lora2"))
    lora = empirical_ntk(model, batch1, batch2, subsets=["lora2"])["lora2"]
    b_only = _kernel_over(sub, [n for n in sub.params if n.endswith(".B")], batch1, batch2)
    assert _rel(lora, b_only) < 1e-10
    # All rows of a layer are the layer's whole weight (q, o and down have 32 rows in tiny-llama).
    rows = empirical_ntk(model, batch1, batch2, subsets=["row32", "linear"], targets="q,o,down")
    assert _rel(rows["row32"], rows["linear"]) < 1e-12


def _kernel_over(sub, names, batch1, batch2):
    params = [sub.params[n] for n in names]

    def grads(batch):
        out = []
        for i in range(batch["input_ids"].shape[0]):
            logits = label_logits(sub.model, slice_batch(batch, [i]))[0]
            out.append(torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
                logits[c], params, retain_graph=True)]) for c in range(logits.shape[0])]))
        return torch.stack(out)

    return torch.einsum("icp,jdp->ijcd", grads(batch1), grads(batch2))


def test_bad_subsets_and_implementations(setups):
    model, batch1, _ = setups["tiny-bert"]
    with pytest.raises(UserError, match="bad adapter spec 'row0'"):
        empirical_ntk(model, batch1, subsets=["row0"])
    with pytest.raises(UserError, match="unknown eNTK implementation 'magic'"):
        empirical_ntk(model, batch1, implementation="magic")
    with pytest.raises(UserError, match="matches no Linear layer"):
        empirical_ntk(model, batch1, subsets=["linear"], targets="gate_proj")


def test_nan_outputs_are_refused(setups):
    model, batch1, _ = setups["tiny-llama"]
    broken = load_model("tiny-llama", dtype=torch.float64, seed=2)[0]
    with torch.no_grad():
        broken.model.norm.weight.fill_(float("nan"))
    with pytest.raises(UserError, match="NaN or Inf"):
        empirical_ntk(broken, batch1, subsets=["row1"])
