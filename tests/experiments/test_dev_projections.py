"""λ selection from dev projections: the same dev predictions, λ and fits as from the dev×train kernels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ntk_peft import load_model
from ntk_peft.errors import UserError
from ntk_peft.experiments import dev_projections as module
from ntk_peft.experiments.compare import fit_seed, plan_seed, run_compare
from ntk_peft.ntk import kernel_blocks
from ntk_peft.solvers import LAMBDA_GRID, select_lambda

NAMES = ["full", "row1", "lora1"]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama", dtype=torch.float64, seed=1)


@pytest.mark.parametrize("task,solver", [("sst2", "klr"), ("mnli", "klr"), ("mnli", "krr"), ("sst2", "svm")])
def test_dev_projections_equal_the_dev_kernel_times_every_grid_fit(tmp_path, tiny, task, solver):
    """P_dev = K_dev·W_λ for every grid λ (brute force: the dev kernel blocks), and the same λ picked."""
    model, tok = tiny
    plan = plan_seed(model, tok, "tiny-llama", task, NAMES, 4, 13, tmp_path, max_eval=6, block_size=3)
    fit = fit_seed(model, tok, task, NAMES, plan, solver=solver, progress=False, dev_predictions="projections")
    train = load_file(str(plan.folder / "train_kernels.safetensors"))
    dev = kernel_blocks(model, plan.batches["train"], plan.batches["dev"], NAMES, progress=False)  # not stored
    y_train = np.array([e.label for e in plan.train])
    y_dev = np.array([e.label for e in plan.dev])
    f0_train, f0_dev = fit.f0["train"].numpy(), fit.f0["dev"].numpy()
    for name in NAMES:
        kt, kd = train[f"K/{name}"].numpy(), dev[name].permute(1, 0, 3, 2).numpy()  # K(dev, train)
        lambdas, models = module.grid_fits(solver, kt, y_train, f0_train)
        weights, counts = module.stacked_weights(models)
        projections = module.dev_projections(model, plan, {name: weights}, progress=False)[name]
        assert projections.shape == (len(plan.dev), kt.shape[2], sum(counts)) and len(counts) == len(LAMBDA_GRID)
        expected = np.einsum("jidc,ics->jds", kd, weights.numpy())
        terms = np.einsum("jidc,ics->jds", np.abs(kd), np.abs(weights.numpy()))  # the sum's scale
        # tiny-llama's RMSNorm runs in float32 (see tests/ntk/test_directions.py)
        assert (np.abs(projections - expected) <= 1e-6 * terms).all()
        index, accuracies = module.pick_from_projections(lambdas, models, counts, projections, y_dev, f0_dev)
        chosen, by_kernels = select_lambda(solver, kt, y_train, kd, y_dev, f0_train, f0_dev)
        assert accuracies == by_kernels and lambdas[index] == chosen == fit.result["lambda"][name]
    assert fit.result["dev_predictions"] == "projections"
    assert not list((plan.store.folder / "blocks").glob("dev-0-*"))  # no dev kernel was computed


def test_compare_by_dev_projections_matches_dev_kernels_without_dev_kernel_blocks(tmp_path):
    kwargs = dict(k=4, seeds=[13, 21], model_name="tiny-llama", max_eval=8, block_size=4, progress=False)
    by_kernels = run_compare("sst-5", ["row1", "col1"], out=tmp_path / "kernels", **kwargs)
    by_projections = run_compare("sst-5", ["row1", "col1"], out=tmp_path / "projections",
                                 dev_predictions="projections", **kwargs)
    assert by_kernels["dev_predictions"] == "kernels" and by_projections["dev_predictions"] == "projections"
    for a, b in zip(by_kernels["per_seed"], by_projections["per_seed"]):
        assert a["accuracy"] == b["accuracy"] and a["lambda"] == b["lambda"]
        assert a["relative_difference"] == b["relative_difference"]
    stored = {p.name.split("-")[0] + "-" + p.name.split("-")[1] for p in (tmp_path / "projections").rglob("blocks/*")}
    assert not any(p.startswith("dev-0") or p.startswith("dev-1") for p in stored)
    assert any(p.startswith("dev-projections") for p in stored)
    directions = [p.stem for p in (tmp_path / "projections").rglob("blocks/dev-directions-*")]
    assert len(directions) == 2 and all(p.endswith("-seconds-0-0") for p in directions)  # tensors removed
    assert list((tmp_path / "kernels").rglob("blocks/dev-0-0.safetensors"))


def test_dev_projections_resume_from_stored_directions(tmp_path, tiny, monkeypatch):
    """An interruption after the directions keeps them; the rerun reads them back, then removes them and
    keeps their compute time."""
    model, tok = tiny
    plan = plan_seed(model, tok, "tiny-llama", "sst2", NAMES, 4, 13, tmp_path, max_eval=6, block_size=3)
    weights = {n: torch.randn(len(plan.train), 2, 3, dtype=torch.float64,
                              generator=torch.Generator().manual_seed(i)) for i, n in enumerate(NAMES)}
    clean = module.dev_projections(model, plan_seed(model, tok, "tiny-llama", "sst2", NAMES, 4, 13,
                                                    tmp_path / "clean", max_eval=6, block_size=3),
                                   weights, progress=False)
    calls = {"directions": 0}
    original_directions, original_projection = module.recorded_directions, module.project_directions
    monkeypatch.setattr(module, "recorded_directions", lambda *a, **k: calls.__setitem__(
        "directions", calls["directions"] + 1) or original_directions(*a, **k))

    def dying(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "project_directions", dying)
    with pytest.raises(KeyboardInterrupt):
        module.dev_projections(model, plan, weights, progress=False)
    blocks = plan.store.folder / "blocks"
    assert calls["directions"] == 1 and [p.stem.endswith("-seconds-0-0") for p in blocks.glob("dev-directions-*")] \
        == [False]
    monkeypatch.setattr(module, "project_directions", original_projection)
    resumed = module.dev_projections(model, plan, weights, progress=False)
    assert calls["directions"] == 1  # read back, not recomputed
    for n in NAMES:
        assert np.array_equal(resumed[n], clean[n])
    assert [p.stem.endswith("-seconds-0-0") for p in blocks.glob("dev-directions-*")] == [True]
    assert plan.store.compute_seconds() > 0


@pytest.mark.parametrize("kwargs,match", [
    (dict(dev_predictions="dev"), "unknown dev predictions 'dev'"),
    (dict(dev_predictions="projections", kernels=["signgd"]), "for the NTK only"),
    (dict(dev_predictions="projections", solver="svm", task="mnli"), "multi-class SVM has no direction form"),
])
def test_bad_dev_predictions_are_refused_before_any_work(tmp_path, kwargs, match):
    task = kwargs.pop("task", "sst2")
    with pytest.raises(UserError, match=match):
        run_compare(task, ["row1"], k=4, seeds=[13], model_name="tiny-llama", out=tmp_path / "x", progress=False,
                    **kwargs)
    assert not (tmp_path / "x" / "results.json").exists()


def test_evaluation_reads_the_chosen_directions_kept_from_the_dev_projections(tmp_path, monkeypatch):
    """The chosen λ's directions, formed for the dev projections, are the evaluation's: no backward pass
    computes them again (Wanda-calibrated subsets too), and the kept copies go once the evaluation is
    stored."""
    from ntk_peft.experiments import projections

    calls = {"directions": 0}
    original = projections.subset_directions
    monkeypatch.setattr(projections, "subset_directions", lambda *a, **k: calls.__setitem__(
        "directions", calls["directions"] + 1) or original(*a, **k))
    kwargs = dict(k=4, seeds=[13, 21], model_name="tiny-llama", max_eval=8, block_size=4, progress=False)
    names = ["full", "row1", "col1:wanda-max"]
    run_compare("sst-5", names, out=tmp_path / "kept", dev_predictions="projections", **kwargs)
    assert calls["directions"] == 0
    assert not list((tmp_path / "kept").rglob("blocks/direction-of-*"))  # removed once every projection is in
    run_compare("sst-5", names, out=tmp_path / "by-kernels", **kwargs)  # λ from dev kernels: nothing kept
    assert calls["directions"] == 2 * len(names)  # 2 seeds x 3 kernels


def test_kept_directions_project_the_evaluation_as_computed_ones(tmp_path, tiny, monkeypatch):
    """Eval projections onto the kept directions (recorded with the dev projections) equal those onto
    directions computed by reverse mode, and give the same accuracies (tiny-bert: float64 throughout,
    where tiny-llama's RMSNorm rounds to float32)."""
    from ntk_peft.experiments import projections

    calls = {"directions": 0}
    original = projections.subset_directions
    monkeypatch.setattr(projections, "subset_directions", lambda *a, **k: calls.__setitem__(
        "directions", calls["directions"] + 1) or original(*a, **k))
    model, tok = load_model("tiny-bert", dtype=torch.float64, seed=1)
    plans = [plan_seed(model, tok, "tiny-bert", "sst-5", NAMES, 4, seed, tmp_path / "seeds", max_eval=8,
                       block_size=4) for seed in (13, 21)]
    fits = [fit_seed(model, tok, "sst-5", NAMES, plan, progress=False, dev_predictions="projections")
            for plan in plans]
    assert [len(list((p.store.folder / "blocks").glob("direction-of-*"))) for p in plans] == [len(NAMES)] * 2
    by_kept, _ = projections.score_with_projections(model, fits, NAMES, tmp_path / "kept", model_name="tiny-bert",
                                                    progress=False)
    assert calls["directions"] == 0
    assert not [p for plan in plans for p in (plan.store.folder / "blocks").glob("direction-of-*")]
    fresh, _ = projections.score_with_projections(model, fits, NAMES, tmp_path / "fresh", model_name="tiny-bert",
                                                  progress=False)  # nothing kept now: computed
    assert calls["directions"] == 2 * len(NAMES) and by_kept == fresh
    blocks = {run: sorted((tmp_path / run).glob("*/blocks/eval-*")) for run in ("kept", "fresh")}
    assert len(blocks["kept"]) == len(blocks["fresh"]) == 2
    for a, b in zip(blocks["kept"], blocks["fresh"]):
        for key, value in load_file(str(a)).items():
            expected = load_file(str(b))[key]
            torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-10 * float(expected.abs().max()))


def test_a_dev_run_cut_short_after_its_projections_still_keeps_the_chosen_directions(tmp_path, tiny):
    """Directions left behind by a run stopped after the last dev projection are retired on the rerun:
    the chosen columns kept (those of the chosen weights), the time kept, the tensors removed."""
    model, tok = tiny
    plan = plan_seed(model, tok, "tiny-llama", "sst2", NAMES, 4, 13, tmp_path, max_eval=6, block_size=3)
    weights = {n: torch.randn(len(plan.train), 2, 3, dtype=torch.float64,
                              generator=torch.Generator().manual_seed(i)) for i, n in enumerate(NAMES)}
    module.dev_projections(model, plan, weights, progress=False)  # no keep: nothing kept
    blocks = plan.store.folder / "blocks"
    assert not list(blocks.glob("direction-of-*"))
    digest = module.tensor_hash([weights[n] for n in NAMES])[:16]
    seconds_block = f"dev-directions-{digest}-seconds"
    assert plan.store.has(seconds_block, 0, 0) and not plan.store.has(f"dev-directions-{digest}", 0, 0)
    # a run stopped between the last projection and the retirement: the directions are back on disk
    subs = {str(s): module.subset_params(model, s, "all", 0) for s in module.parse_subsets(NAMES)}
    directions = module.recorded_directions(model, subs, plan.batches["train"], weights)
    plan.store.save(f"dev-directions-{digest}", 0, 0,
                    {f"V/{n}/{key}": v for n, part in directions.items() for key, v in part.items()}, seconds=1.0)
    module.dev_projections(model, plan, weights, progress=False, keep=lambda p: {"row1": slice(1, 2)})
    assert not plan.store.has(f"dev-directions-{digest}", 0, 0)
    kept = plan.store.load(module.kept_direction_name("row1", weights["row1"][:, :, 1:2]), 0, 0)
    assert set(kept) == set(directions["row1"])
    for key, value in kept.items():
        assert torch.equal(value, directions["row1"][key][1:2])
    assert plan.store.compute_seconds(f"dev-directions-{digest}-seconds") == 1.0
