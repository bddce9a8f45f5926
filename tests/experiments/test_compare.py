"""ntk-compare end to end on a tiny model: schema, reuse of kernels, one-line errors."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from ntk_peft.cli import compare
from ntk_peft.cli.common import run_cli
from ntk_peft.experiments import run_compare
from ntk_peft.solvers import LAMBDA_GRID


def _run(capsys, *argv):
    code = run_cli(compare.main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_compare_writes_results_figures_and_reuses_kernels(capsys, tmp_path):
    argv = ["--task", "sst2", "--subset", "row1", "--subset", "lora1", "--model", "tiny-bert", "--seeds", "13,21",
            "--max-eval", "12", "--out", str(tmp_path)]
    code, out, err = _run(capsys, *argv)
    assert code == 0, err
    assert "K_full" in out and "K_row1" in out and "zero-shot" in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["task"] == "SST-2" and results["seeds"] == [13, 21] and results["subsets"] == ["full", "row1", "lora1"]
    for seed_result in results["per_seed"]:
        assert set(seed_result["accuracy"]) == {"full", "row1", "lora1", "zeroshot"}
        assert set(seed_result["relative_difference"]) == {"row1", "lora1"}
        assert 0 <= seed_result["relative_difference"]["row1"]["p2"] <= 2
        assert set(seed_result["lambda"]) == {"full", "row1", "lora1"}
        assert set(seed_result["lambda_over_scale"]) == set(seed_result["lambda"])
        for factor in seed_result["lambda_over_scale"].values():  # λ / mean train-kernel diagonal: a grid point
            assert any(factor == pytest.approx(g, rel=1e-12) for g in LAMBDA_GRID)
        # eval counts per kernel and zero-shot: rows the true class (12 eval examples), diagonal the accuracy
        assert set(seed_result["eval_confusion"]) == set(seed_result["accuracy"])
        for name, counts in seed_result["eval_confusion"].items():
            assert np.array(counts).shape == (2, 2) and np.array(counts).sum() == 12
            assert np.trace(counts) / 12 == seed_result["accuracy"][name]
    from safetensors.numpy import load_file

    f0 = load_file(str(next(tmp_path.glob("**/seed-13*/f0.safetensors"))))
    f0_eval = next(v for key, v in f0.items() if key.startswith("eval/"))  # columns: the predicted class
    assert np.array(results["per_seed"][0]["eval_confusion"]["zeroshot"]).sum(0).tolist() == \
        np.bincount(f0_eval.argmax(1), minlength=2).tolist()
    assert set(results["summary"]["accuracy"]["full"]) == {"mean", "std"}
    assert results["eval_predictions"] == "projections" and results["timing_s"]["projections_recorded"] > 0
    assert (tmp_path / "figures" / "kernel_heatmaps.png").stat().st_size > 10_000
    assert (tmp_path / "figures" / "kernel_spectra.png").stat().st_size > 10_000
    from ntk_peft.plotting import figure_script

    for kind in ("heatmaps", "spectra"):  # the figures/ scripts redraw from the folder alone
        redrawn = figure_script(kind, [str(tmp_path), "--seed", "21", "--out", str(tmp_path / f"{kind}-21.png")])
        assert redrawn.stat().st_size > 10_000
    blocks = sorted(p for p in tmp_path.glob("**/blocks/*.safetensors"))
    assert any("eval-projections" in str(p) for p in blocks) and any("seed-13" in str(p) for p in blocks)
    mtimes = {p: p.stat().st_mtime_ns for p in blocks}
    code, _, err = _run(capsys, *argv)  # rerun: every block is read back, none rewritten
    assert code == 0, err
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("**/blocks/*.safetensors")} == mtimes
    again = json.loads((tmp_path / "results.json").read_text())["per_seed"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "timing_s"} for r in rows]  # noqa: E731
    assert strip(again) == strip(results["per_seed"])


def test_eval_kernel_is_in_data_order_though_blocked_by_length(tmp_path):
    """Eval blocks run in order of prompt length; the saved kernel equals a direct one, row by row."""
    from safetensors.torch import load_file

    from ntk_peft import load_model
    from ntk_peft.ntk import empirical_ntk
    from ntk_peft.tasks import load_split, make_batch

    results = run_compare("sst2", ["row1"], k=4, seeds=[13], model_name="tiny-llama", max_eval=9, out=tmp_path,
                          block_size=4, progress=False, eval_kernels=True)
    assert results["eval_predictions"] == "kernels"
    model, tok = load_model("tiny-llama")
    saved = load_file(str(tmp_path / "seed-13" / "eval_kernels.safetensors"))
    split = load_split("sst2", 4, 13)
    train = sorted(split.train, key=lambda e: e.label)
    keep = sorted(np.random.default_rng(0).permutation(len(split.eval))[:9])
    evaluation = [split.eval[i] for i in keep]
    lengths = [make_batch(tok, "sst2", [e])["attention_mask"].sum().item() for e in evaluation]
    assert lengths != sorted(lengths)  # the blocking really reorders
    assert saved["labels"].tolist() == [e.label for e in evaluation]
    direct = empirical_ntk(model, make_batch(tok, "sst2", evaluation), make_batch(tok, "sst2", train),
                           subsets=["full", "row1"])
    for name in ("full", "row1"):
        assert (saved[f"K/{name}"] - direct[name]).abs().max() <= 1e-6 * direct[name].abs().max()


@pytest.mark.parametrize("task,solver", [("sst2", "klr"), ("sst2", "svm"), ("mnli", "klr"), ("mnli", "krr")])
def test_projections_score_exactly_as_the_eval_kernels(tmp_path, task, solver):
    """Same fits, two ways to the eval decisions: P = K_eval·W from the stored blocks, and equal accuracies."""
    import torch
    from safetensors.torch import load_file

    from ntk_peft import load_model
    from ntk_peft.experiments.compare import fit_seed, plan_seed, score_with_kernels
    from ntk_peft.experiments.projections import score_with_projections
    from ntk_peft.tasks import get_task

    model, tok = load_model("tiny-llama", dtype=torch.float64, seed=1)
    names = ["full", "row1", "lora1"]
    plans = [plan_seed(model, tok, "tiny-llama", task, names, 4, seed, tmp_path, max_eval=10, block_size=4)
             for seed in (13, 21)]
    fits = [fit_seed(model, tok, task, names, plan, solver=solver, progress=False) for plan in plans]
    by_projection, _ = score_with_projections(model, fits, names, tmp_path / "projections",
                                              model_name="tiny-llama", progress=False)
    confusion_by_projection = [copy.deepcopy(fit.result["eval_confusion"]) for fit in fits]
    by_kernel = [score_with_kernels(model, fit, names, progress=False) for fit in fits]
    assert by_projection == by_kernel
    assert confusion_by_projection == [fit.result["eval_confusion"] for fit in fits]
    classes = len(get_task(task).labels)
    for fit, accuracy in zip(fits, by_kernel):  # counts: rows the true class, columns the predicted one
        labels = [e.label for e in fit.plan.evaluation]
        k_eval = load_file(str(fit.plan.folder / "eval_kernels.safetensors"))
        offsets = fit.f0["eval"].numpy() if fit.offset else None
        for name in names:
            predicted = fit.models[name].predict(k_eval[f"K/{name}"].numpy(), offsets)
            expected = np.zeros((classes, classes), dtype=int)
            for true, guess in zip(labels, predicted):
                expected[true, guess] += 1
            assert fit.result["eval_confusion"][name] == expected.tolist()
            assert np.trace(expected) / len(labels) == accuracy[name]

    folder = next((tmp_path / "projections").iterdir())
    blocks = [load_file(str(p)) for p in sorted((folder / "blocks").glob("eval-*"), key=lambda p: int(p.stem.split("-")[2]))]
    restore = torch.from_numpy(np.argsort(plans[0].eval_order))
    for name in names:
        projections = torch.cat([b[f"P/{name}"] for b in blocks])[restore]
        for k, fit in enumerate(fits):
            k_eval = load_file(str(fit.plan.folder / "eval_kernels.safetensors"))[f"K/{name}"]
            weights = torch.from_numpy(fit.models[name].direction_weights())
            expected = torch.einsum("jidc,ics->jds", k_eval, weights)
            terms = torch.einsum("jidc,ics->jds", k_eval.abs(), weights.abs())  # the sum's scale before cancelling
            # tiny-llama's RMSNorm runs in float32 (see tests/ntk/test_directions.py)
            assert ((projections[..., k : k + 1] - expected).abs() <= 1e-6 * terms).all()


@pytest.mark.parametrize("argv,match", [
    (["--task", "sst7", "--subset", "row1"], "unknown task 'sst7'"),
    (["--task", "sst2", "--subset", "row0"], "bad adapter spec 'row0'"),
    (["--task", "sst2", "--subset", "row1", "--seeds", "1,x"], "seeds must be comma-separated integers"),
    (["--task", "trec", "--subset", "row1", "--k", "80"], "the largest possible k is 75"),
])
def test_bad_input_is_one_line_and_status_2(capsys, tmp_path, argv, match):
    code, _, err = _run(capsys, *argv, "--model", "tiny-bert", "--out", str(tmp_path / "x"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert match in err


def test_output_folder_of_another_run_is_refused_and_kept(capsys, tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"task": "MR", "model": "tiny-bert", "k": 16}))
    code, _, err = _run(capsys, "--task", "sst2", "--subset", "row1", "--model", "tiny-bert", "--out", str(tmp_path))
    assert code == 2 and "holds results of another run" in err
    assert json.loads((tmp_path / "results.json").read_text())["task"] == "MR"


@pytest.fixture(scope="module")
def fine_tuned_run(tmp_path_factory):
    """A few steps of LoRA on tiny-llama (seed 5, k = 4): a checkpoint to take kernels at."""
    from ntk_peft.train import TrainConfig, train

    out = tmp_path_factory.mktemp("ft") / "lora-run"
    train(TrainConfig(task="sst2", adapter="lora2", out=str(out), k=4, seed=5, model="tiny-llama", steps=4, lr=5e-2,
                      batch_size=4, eval_every=4, track_every=0, max_eval=4), progress=False)
    return out


def test_kernels_at_a_fine_tuned_checkpoint_and_their_distance_from_pretrained(capsys, tmp_path, fine_tuned_run):
    from safetensors.torch import load_file

    from ntk_peft import load_model
    from ntk_peft.adapters import fold_adapter
    from ntk_peft.analysis import kernel_distance
    from ntk_peft.ntk import empirical_ntk
    from ntk_peft.tasks import load_split, make_batch

    code, out, err = _run(capsys, "--task", "sst2", "--subset", "row1", "--model", "tiny-llama", "--k", "4",
                          "--max-eval", "6", "--block-size", "4", "--adapter-checkpoint", str(fine_tuned_run),
                          "--out", str(tmp_path), "--no-figures")
    assert code == 0, err
    assert "fine-tuned" in out and "|K0-Kt|/|K0|" in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["seeds"] == [5]  # the checkpoint's own split
    assert results["adapter_checkpoint"]["spec"] == "lora2" and results["adapter_checkpoint"]["seed"] == 5
    train = sorted(load_split("sst2", 4, 5).train, key=lambda e: e.label)
    pretrained, tok = load_model("tiny-llama")
    batch = make_batch(tok, "sst2", train)
    k0 = empirical_ntk(pretrained, batch, subsets=["full", "row1"])
    kt = empirical_ntk(fold_adapter(load_model("tiny-llama")[0], fine_tuned_run / "adapter"), batch,
                       subsets=["full", "row1"])
    saved = load_file(str(tmp_path / "seed-5" / "train_kernels.safetensors"))
    for name in ("full", "row1"):
        assert (saved[f"K/{name}"] - kt[name]).abs().max() <= 1e-6 * kt[name].abs().max()
        expect = kernel_distance(k0[name].numpy(), kt[name].numpy())
        assert expect > 1e-3  # the checkpoint really moved the kernel
        assert results["per_seed"][0]["kernel_distance"][name] == pytest.approx(expect, rel=1e-4)
    first = load_file(str(tmp_path / "pretrained" / "seed-5" / "blocks" / "train-0-0.safetensors"))["full"]
    assert (first - k0["full"][:4, :4]).abs().max() <= 1e-6 * k0["full"].abs().max()  # K_0 kept in its own store
    hashes = [json.loads((tmp_path / f / "meta.json").read_text())["model_hash"] for f in ("seed-5", "pretrained/seed-5")]
    assert hashes[0] != hashes[1]
    assert set(results["summary"]["kernel_distance"]) == {"full", "row1"}


@pytest.mark.parametrize("model,match", [("tiny-bert", "was trained on model tiny-llama, not tiny-bert"),
                                         (None, "no fine-tuned adapter in")])
def test_bad_checkpoint_is_one_line_and_status_2(capsys, tmp_path, fine_tuned_run, model, match):
    folder = fine_tuned_run if model else tmp_path / "nothing-here"
    code, _, err = _run(capsys, "--task", "sst2", "--subset", "row1", "--model", model or "tiny-llama",
                        "--adapter-checkpoint", str(folder), "--out", str(tmp_path / "x"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert match in err


def test_changing_only_max_eval_reuses_the_train_and_dev_kernels(capsys, tmp_path):
    """The README's quick look then `make run` in the same folder: train/dev blocks are read back, the new
    evaluation set gets its own eval f0 and projections, and the first run's results stay reproducible."""
    argv = ["--task", "sst2", "--subset", "row1", "--model", "tiny-llama", "--seeds", "13", "--k", "4",
            "--block-size", "4", "--no-figures", "--out", str(tmp_path)]
    code, _, err = _run(capsys, *argv, "--max-eval", "8")
    assert code == 0, err
    first = json.loads((tmp_path / "results.json").read_text())
    kernels = {p: p.stat().st_mtime_ns for p in (tmp_path / "seed-13" / "blocks").glob("*.safetensors")}
    assert kernels and all(p.name.startswith(("train-", "dev-")) for p in kernels)
    code, _, err = _run(capsys, *argv, "--max-eval", "12")
    assert code == 0, err
    assert {p: p.stat().st_mtime_ns for p in kernels} == kernels  # not recomputed
    second = json.loads((tmp_path / "results.json").read_text())
    assert second["max_eval"] == 12 and second["per_seed"][0]["n_eval"] == 12
    assert second["per_seed"][0]["lambda"] == first["per_seed"][0]["lambda"]  # the same fits
    assert len(list((tmp_path / "eval-projections").iterdir())) == 2  # one folder per evaluation set
    code, _, err = _run(capsys, *argv, "--max-eval", "8")  # back to the first: everything is read back
    assert code == 0, err
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["per_seed"][0]["accuracy"] == first["per_seed"][0]["accuracy"]
    code, _, err = _run(capsys, *argv, "--max-eval", "8", "--eval-kernels")  # eval kernels named by their eval set
    assert code == 0, err
    names = {p.name.rsplit("-", 2)[0] for p in (tmp_path / "seed-13" / "blocks").glob("eval-*")}
    assert len(names) == 1 and len(next(iter(names))) == len("eval-") + 12


def test_directions_are_resumable_blocks_removed_once_every_projection_is_stored(tmp_path, monkeypatch):
    """An interruption after the directions keeps them; the rerun reads them back and then deletes them."""
    import torch

    from ntk_peft import load_model
    from ntk_peft.experiments import projections as module
    from ntk_peft.experiments.compare import fit_seed, plan_seed

    model, tok = load_model("tiny-llama", dtype=torch.float64, seed=1)
    names = ["full", "row1"]
    plans = [plan_seed(model, tok, "tiny-llama", "sst2", names, 4, seed, tmp_path, max_eval=10, block_size=4)
             for seed in (13, 21)]
    fits = [fit_seed(model, tok, "sst2", names, plan, progress=False) for plan in plans]
    clean, _ = module.score_with_projections(model, fits, names, tmp_path / "clean", model_name="tiny-llama",
                                             progress=False)
    calls = {"directions": 0}
    original_directions, original_projection = module.subset_directions, module.project_directions
    monkeypatch.setattr(module, "subset_directions",
                        lambda *a, **k: calls.__setitem__("directions", calls["directions"] + 1)
                        or original_directions(*a, **k))

    def dying(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "project_directions", dying)
    with pytest.raises(KeyboardInterrupt):
        module.score_with_projections(model, fits, names, tmp_path / "run", model_name="tiny-llama", progress=False)
    folder = next((tmp_path / "run").iterdir()) / "blocks"
    assert calls["directions"] == 4 and len(list(folder.glob("direction-*"))) == 4  # 2 seeds x 2 kernels
    monkeypatch.setattr(module, "project_directions", original_projection)
    resumed, seconds = module.score_with_projections(model, fits, names, tmp_path / "run", model_name="tiny-llama",
                                                     progress=False)
    assert calls["directions"] == 4 and resumed == clean  # read back, not recomputed
    assert not list(folder.glob("direction-*")) and (folder / "directions-0-0.safetensors").is_file()
    assert seconds > 0


def test_sign_kernels_score_by_projection_as_by_their_eval_kernels(tmp_path):
    """SignGD and asymmetric SignGD models (klr, AsK-LS on the logit difference): the eval decisions from
    projections (directions of sign gradients, two sides for AsK-LS) equal those from the eval kernels."""
    import torch

    from ntk_peft import load_model
    from ntk_peft.experiments.compare import fit_seed, kernel_key, plan_seed
    from ntk_peft.experiments.projections import score_with_projections
    from ntk_peft.ntk import kernel_blocks
    from ntk_peft.ntk.kernel_types import KernelType

    model, tok = load_model("tiny-llama", dtype=torch.float64, seed=1)
    names = ["full", "row1", "lora1"]
    kinds = (KernelType.SIGNGD, KernelType.ASYMMETRIC_SIGNGD)
    plans = [plan_seed(model, tok, "tiny-llama", "sst2", names, 4, seed, tmp_path, max_eval=10, block_size=4)
             for seed in (13, 21)]
    fits = [fit_seed(model, tok, "sst2", names, plan, progress=False, kernels=kinds) for plan in plans]
    for kernel in kinds:
        keys = {n: kernel_key(kernel, n) for n in names}
        by_projection, _ = score_with_projections(model, fits, names, tmp_path / kernel.value, model_name="tiny-llama",
                                                  progress=False, kernel=kernel, output="difference", keys=keys)
        for fit, accuracy in zip(fits, by_projection):
            restore = torch.from_numpy(np.argsort(fit.plan.eval_order))
            eval_train = kernel_blocks(model, fit.plan.batches["train"], fit.plan.batches["eval"], names,
                                       kernel=kernel, output="difference", progress=False)
            labels = np.array([e.label for e in fit.plan.evaluation])
            for n in names:
                solver = fit.models[keys[n]]
                train_eval = eval_train[n][:, restore]  # K(train_i, eval_m) [n, m, 1, 1]
                if kernel.symmetric:
                    decision = solver.decision_function(train_eval.permute(1, 0, 3, 2).numpy(), fit.f0["eval"].numpy())
                else:
                    eval_first = eval_train[n + "~"][:, restore].permute(1, 0, 3, 2).numpy()
                    decision = solver.decision_function(eval_first, fit.f0["eval"].numpy(),
                                                        flipped=train_eval[..., 0, 0].numpy())
                assert accuracy[keys[n]] == float(np.mean(decision.argmax(1) == labels))
                assert np.abs(decision).max() > 0


def test_compare_cli_with_every_kernel_type(capsys, tmp_path):
    code, out, err = _run(capsys, "--task", "sst2", "--subset", "row1", "--kernel", "ntk", "--kernel", "signgd",
                          "--kernel", "asymmetric_signgd", "--model", "tiny-llama", "--k", "4", "--seeds", "13",
                          "--max-eval", "8", "--out", str(tmp_path), "--no-figures")
    assert code == 0, err
    results = json.loads((tmp_path / "results.json").read_text())
    for key in ("full", "row1", "signgd:full", "signgd:row1", "asymmetric_signgd:full", "asymmetric_signgd:row1"):
        assert 0 <= results["summary"]["accuracy"][key]["mean"] <= 1
        assert key in out
    assert results["kernel_types"]["asymmetric_signgd"] == {"solver": "lssvm", "output": "difference"}
    assert set(results["summary"]["relative_difference"]) == {"row1", "signgd:row1", "asymmetric_signgd:row1"}
    # stored apart: another run adding a kernel type reads the NTK blocks back
    meta = json.loads((tmp_path / "seed-13" / "meta.json").read_text())
    assert meta["kernels"]["train-signgd"]["kernel"] == "signgd" and meta["kernels"]["train"]["kernel"] == "ntk"


def test_asymmetric_kernel_on_a_multiclass_task_is_one_line(capsys, tmp_path):
    code, _, err = _run(capsys, "--task", "mnli", "--subset", "row1", "--kernel", "asymmetric_signgd",
                        "--model", "tiny-llama", "--out", str(tmp_path / "x"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "AsK-LS) is for two classes; MNLI has 3" in err


def test_wanda_subsets_select_rows_on_the_first_seeds_training_prompts(tmp_path):
    """``row1:wanda-max`` in ntk-compare: one selection (Wanda scores of seed 13's training prompts) for
    every seed; seed 21's stored kernel equals a direct reference eNTK with that calibration."""
    from safetensors.torch import load_file

    from ntk_peft import load_model
    from ntk_peft.adapters import apply_adapter
    from ntk_peft.ntk import empirical_ntk
    from ntk_peft.tasks import load_split, make_batch

    results = run_compare("sst2", ["row1:wanda-max", "col1:random"], k=4, seeds=[13, 21], model_name="tiny-llama",
                          max_eval=9, out=tmp_path, block_size=4, progress=False)
    assert results["subsets"] == ["full", "row1:wanda-max", "col1:random"]
    assert set(results["summary"]["relative_difference"]) == {"row1:wanda-max", "col1:random"}
    model, tok = load_model("tiny-llama")
    calibration = make_batch(tok, "sst2", load_split("sst2", 4, 13).train)
    rows = {n: layer.rows.tolist() for n, layer in
            apply_adapter(load_model("tiny-llama")[0], "row1:wanda-max", calibration=calibration).layers.items()}
    assert any(r != [0] for r in rows.values())  # not row 0: the selection really depends on the scores
    train = sorted(load_split("sst2", 4, 21).train, key=lambda e: e.label)
    direct = empirical_ntk(model, make_batch(tok, "sst2", train), subsets=["row1:wanda-max"],
                           implementation="reference", calibration=calibration)["row1:wanda-max"]
    saved = load_file(str(tmp_path / "seed-21" / "train_kernels.safetensors"))["K/row1:wanda-max"]
    assert (saved - direct).abs().max() <= 1e-5 * direct.abs().max()


def test_per_seed_results_combine_into_one_summary_and_refuse_other_runs():
    from ntk_peft.errors import UserError
    from ntk_peft.experiments.compare import combine_seed_results

    def part(seed, row1, **changed):
        return {"task": "SST-2", "k": 16, "seeds": [seed], "summary": {},
                "per_seed": [{"seed": seed, "accuracy": {"row1": row1},
                              "relative_difference": {"row1": {"p1": row1 / 10, "p2": row1 / 5}}}],
                "timing_s": {"total": 10.0, "kernels_recorded": 4.0, "by_type": {"ntk": 4.0}}, **changed}

    combined = combine_seed_results([part(13, 0.5), part(21, 0.75), part(42, 1.0)])
    assert combined["seeds"] == [13, 21, 42] and [r["seed"] for r in combined["per_seed"]] == [13, 21, 42]
    values = np.array([0.5, 0.75, 1.0])
    assert combined["summary"]["accuracy"]["row1"] == {"mean": float(values.mean()), "std": float(values.std())}
    assert combined["summary"]["relative_difference"]["row1"]["p2"]["mean"] == pytest.approx(values.mean() / 5, rel=1e-15)
    assert combined["timing_s"] == {"total": 30.0, "kernels_recorded": 12.0, "by_type": {"ntk": 12.0}}
    with pytest.raises(UserError, match="differ in k, max_eval"):
        combine_seed_results([part(13, 0.5), part(21, 0.5, k=64, max_eval=8)])
    with pytest.raises(UserError, match="repeat a seed"):
        combine_seed_results([part(13, 0.5), part(13, 0.5)])
    # a part over several seeds (an evaluation job's), put back in the study's seed order
    both = {**part(42, 1.0), "seeds": [13, 42], "per_seed": part(13, 0.5)["per_seed"] + part(42, 1.0)["per_seed"]}
    ordered = combine_seed_results([both, part(21, 0.75)], order=[13, 21, 42])
    assert ordered["seeds"] == [13, 21, 42] and ordered["per_seed"] == combined["per_seed"]
    assert ordered["summary"] == combined["summary"]
    with pytest.raises(UserError, match="cannot be put in the order"):
        combine_seed_results([both, part(21, 0.75)], order=[13, 21])


def test_seeds_whose_lambda_was_picked_differently_combine_and_say_so():
    """Records from before dev predictions were recorded picked λ from dev kernels; a task whose later seeds
    used projections says so per seed and, overall, "per seed"."""
    from ntk_peft.experiments.compare import combine_seed_results

    def part(seed, **changed):
        return {"task": "subj", "k": 16, "seeds": [seed], "summary": {},
                "per_seed": [{"seed": seed, "accuracy": {"row1": 0.5}, "relative_difference": {},
                              **({"dev_predictions": changed["dev_predictions"]} if changed else {})}],
                "timing_s": {"total": 1.0}, **changed}

    mixed = combine_seed_results([part(13), part(21, dev_predictions="projections")])
    assert [r["dev_predictions"] for r in mixed["per_seed"]] == ["kernels", "projections"]
    assert mixed["dev_predictions"] == "per seed"
    same = combine_seed_results([part(13, dev_predictions="projections"), part(21, dev_predictions="projections")])
    assert same["dev_predictions"] == "projections"
    assert combine_seed_results([part(13), part(21)])["dev_predictions"] == "kernels"
