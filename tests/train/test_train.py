"""Fine-tuning on tiny models: rank tracking facts, determinism, resume, outputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from ntk_peft import load_model
from ntk_peft.adapters import apply_adapter, load_adapter
from ntk_peft.analysis import delta_w_metrics, singular_values
from ntk_peft.errors import UserError
from ntk_peft.train import TrainConfig, tracking, train
from ntk_peft.train import loop as train_loop


def _config(tmp_path, name="run", **kw):
    base = dict(task="sst2", adapter="lora2", out=str(tmp_path / name), k=4, seed=5, model="tiny-llama", steps=6,
                lr=5e-2, batch_size=4, eval_every=3, track_every=2, max_eval=8)
    base.update(kw)
    return TrainConfig(**base)


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_lora_rank_never_above_r_and_outputs_written(tmp_path):
    config = _config(tmp_path)
    metrics = train(config, progress=False)
    out = tmp_path / "run"
    rows = _rows(out / "delta_w.csv")
    ranks = [int(float(r["value"])) for r in rows if r["metric"] == "rank_machine"]
    assert ranks and max(ranks) <= 2
    assert max(ranks) == 2  # the update really moved
    assert sorted({int(r["step"]) for r in rows}) == [0, 2, 4, 6]
    assert {int(float(r["value"])) for r in rows if r["metric"] == "rank_machine" and r["step"] == "0"} == {0}
    assert [s for s, _ in metrics["loss"]] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in metrics["dev_accuracy"]] == [3, 6]
    assert 0 <= metrics["eval_accuracy"] <= 1 and metrics["n_eval"] == 8
    assert 0 < metrics["step_seconds"] <= metrics["train_seconds"] and metrics["peak_rss_mb"] > 50
    saved = json.loads((out / "config.json").read_text())
    assert saved["adapter"] == "lora2" and saved["seed"] == 5
    assert json.loads((out / "adapter" / "adapter.json").read_text())["spec"] == "lora2"
    summary = json.loads((out / "delta_w_summary.json").read_text())
    assert summary["last_step"] == 6
    model, _ = load_model("tiny-llama", seed=5)
    handle = load_adapter(model, out / "adapter")  # the saved adapter reproduces the tracked ΔW
    some_layer = next(iter(summary["singular_values"]))
    layer = handle.layers[some_layer]  # ΔW = s·B·A, multiplied in float64 (the float32 product would add rounding)
    sigma = torch.linalg.svdvals(layer.scale * layer.B.detach().double() @ layer.A.detach().double())
    tracked = torch.tensor(summary["singular_values"][some_layer], dtype=torch.float64)
    assert len(tracked) == len(sigma)
    torch.testing.assert_close(tracked, sigma, rtol=0, atol=1e-12 * sigma[0].item())
    from ntk_peft.solvers import predict_logits
    from ntk_peft.tasks import get_task, load_split

    spec = get_task("sst2")  # the saved adapter's eval predictions, counted by hand: rows true, columns predicted
    evaluation = load_split(spec, 4, 5).eval
    evaluation = [evaluation[i] for i in np.sort(np.random.default_rng(0).permutation(len(evaluation))[:8])]
    model.eval()
    predicted = predict_logits(model, load_model("tiny-llama", seed=5)[1], spec, evaluation, 8).argmax(1).tolist()
    counts = [[0, 0], [0, 0]]
    for example, guess in zip(evaluation, predicted):
        counts[example.label][guess] += 1
    assert metrics["eval_confusion"] == counts and metrics["eval_accuracy"] == (counts[0][0] + counts[1][1]) / 8


@pytest.mark.parametrize("spec", ["lora2", "row1", "col1", "lorma+2", "more2x2", "full"])
def test_tracked_spectra_are_the_dense_svds_of_delta_w(spec, monkeypatch):
    """Factored (LoRA, rows, columns, LoRMA₊), zero (at the start) and dense (Monarch, full) spectra all give
    the metrics and singular values of a dense SVD of ΔW; a dense SVD runs only where ΔW ≠ 0 has no factors."""
    model, _ = load_model("tiny-llama", dtype=torch.float64, seed=1)
    handle = apply_adapter(model, spec, seed=3)
    tracker = tracking.DeltaWTracker(handle, None)
    dense_svds = []
    monkeypatch.setattr(tracking, "singular_values", lambda m: dense_svds.append(m) or singular_values(m))
    at_start = tracker.measure(0)
    assert at_start and all(row["value"] == 0.0 for row in at_start if not row["metric"].startswith("inflated_"))
    assert not dense_svds
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in handle.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    rows = tracker.measure(1)
    deltas = handle.delta_weights()
    assert len(dense_svds) == (len(deltas) if spec in ("more2x2", "full") else 0)
    assert {row["layer"] for row in rows} == set(deltas)
    for name, delta in deltas.items():
        expected = delta_w_metrics(delta)
        measured = {row["metric"]: row["value"] for row in rows if row["layer"] == name}
        assert {m: measured[m] for m in ("rank_machine", "rank_relative")} == {
            m: expected[m] for m in ("rank_machine", "rank_relative")}
        for metric in ("effective_rank", "stable_rank", "frobenius", "sigma_max"):
            assert measured[metric] == pytest.approx(expected[metric], rel=1e-10), metric
        dense = singular_values(delta)
        np.testing.assert_allclose(tracker.last_sigma[name], dense, rtol=0, atol=1e-12 * dense[0])


def test_lormapi_inflated_matrix_is_full_rank_at_initialisation(tmp_path):
    train(_config(tmp_path, adapter="lormapi2", steps=2, eval_every=2, track_every=1), progress=False)
    rows = _rows(tmp_path / "run" / "delta_w.csv")
    model, _ = load_model("tiny-llama", seed=5)
    widths = {name: module.out_features for name, module in model.named_modules() if hasattr(module, "out_features")}
    at_start = [r for r in rows if r["step"] == "0" and r["metric"] == "inflated_rank_machine"]
    assert at_start
    for row in at_start:
        assert int(float(row["value"])) == widths[row["layer"]]  # I(BA) = I: rank d


def test_deterministic_and_resumes_to_the_same_result(tmp_path, monkeypatch):
    whole = train(_config(tmp_path, "whole"), progress=False)
    calls = {"n": 0}
    original = train_loop._accuracy

    def interrupted(*args, **kwargs):  # the second dev evaluation (step 6) never happens
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(train_loop, "_accuracy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path, "split"), progress=False)
    monkeypatch.setattr(train_loop, "_accuracy", original)
    resumed = train(_config(tmp_path, "split"), progress=False)
    assert resumed["loss"] == whole["loss"]
    assert resumed["dev_accuracy"] == whole["dev_accuracy"]
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "whole" / "adapter" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "split" / "adapter" / "adapter.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _rows(tmp_path / "whole" / "delta_w.csv") == _rows(tmp_path / "split" / "delta_w.csv")


def test_bad_configuration_is_refused(tmp_path):
    with pytest.raises(UserError, match="not both"):
        train(_config(tmp_path, steps=3, epochs=1.0), progress=False)
    with pytest.raises(UserError, match="unknown schedule"):
        train(_config(tmp_path, schedule="step"), progress=False)
    train(_config(tmp_path, steps=1, eval_every=1, track_every=None), progress=False)
    with pytest.raises(UserError, match="another configuration"):
        train(_config(tmp_path, steps=2), progress=False)


def test_cli_trains_and_reports(tmp_path, capsys):
    from ntk_peft.cli import peft
    from ntk_peft.cli.common import run_cli

    out = tmp_path / "cli"
    code = run_cli(peft.main, ["train", "--task", "sst2", "--adapter", "row1", "--model", "tiny-llama", "--k", "4",
                               "--steps", "2", "--eval-every", "1", "--max-eval", "4", "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "eval accuracy" in printed.out and (out / "adapter" / "adapter.safetensors").is_file()
    code = run_cli(peft.main, ["train", "--task", "sst2", "--adapter", "lora0", "--model", "tiny-llama"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_accuracy_batches_by_length_and_matches_single_example_forwards(tiny_models):
    from ntk_peft.models import label_logits
    from ntk_peft.tasks import Example, get_task, make_batch

    model, tokenizer = tiny_models["tiny-llama"]
    spec = get_task("sst2")
    short, long = "good", "a long and rambling sentence about a film that was not very good at all, sadly"
    examples = [Example(f"x:{i}", short if i % 2 else long, None, i % 3 % 2) for i in range(8)]
    widths = []
    hook = model.get_input_embeddings().register_forward_pre_hook(lambda _, args: widths.append(args[0].shape))
    model.train()
    try:
        accuracy = train_loop._accuracy(model, tokenizer, spec, examples, batch_size=4)
    finally:
        hook.remove()
    assert model.training  # the caller's mode comes back
    lengths = [int(make_batch(tokenizer, spec, [e])["attention_mask"].sum()) for e in examples]
    assert sum(b * t for b, t in widths) == sum(lengths)  # short with short, long with long: no padding
    model.eval()
    with torch.no_grad():
        alone = [int(label_logits(model, make_batch(tokenizer, spec, [e])).argmax()) == e.label for e in examples]
    assert 0 < sum(alone) < len(examples)  # not a trivial accuracy
    assert accuracy == sum(alone) / len(examples)
