"""ΔW figures from tracked training runs (the kernel figures are exercised by the ntk-compare tests)."""

from __future__ import annotations

import numpy as np
import pytest

from ntk_peft.plotting import delta_w_figure_script, load_delta_w_run, median_over_layers, pick_layer
from ntk_peft.train import TrainConfig, train


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for adapter in ("lora2", "lormapi2"):
        train(TrainConfig(task="sst2", adapter=adapter, out=str(root / adapter), k=4, seed=5, model="tiny-llama",
                          steps=4, lr=5e-2, batch_size=4, eval_every=4, track_every=2, max_eval=4), progress=False)
    return root


def test_median_over_layers_by_hand(runs):
    run = load_delta_w_run(runs / "lora2")
    assert run["label"] == "lora2"
    steps, medians = median_over_layers(run["rows"], "effective_rank")
    assert steps.tolist() == [0, 2, 4]
    at_4 = [v for s, _, m, v in run["rows"] if s == 4 and m == "effective_rank"]
    assert len(at_4) > 1 and medians[-1] == np.median(at_4)
    assert median_over_layers(run["rows"], "inflated_rank_machine")[0].size == 0  # only LoRMA has I(BA)
    assert median_over_layers(load_delta_w_run(runs / "lormapi2")["rows"], "inflated_rank_machine")[0].size == 3


def test_figure_scripts_draw_from_run_folders(runs, tmp_path):
    folders = [str(runs / "lora2"), str(runs / "lormapi2")]
    for kind in ("rank", "spectra"):
        path = delta_w_figure_script(kind, [*folders, "--out", str(tmp_path / f"{kind}.png")])
        assert path.stat().st_size > 10_000
    loaded = [load_delta_w_run(f) for f in folders]
    assert "q_proj" in pick_layer(loaded, None)
    assert "layers.0.mlp" in pick_layer(loaded, "layers.0.mlp")
    with pytest.raises(SystemExit) as error:
        delta_w_figure_script("spectra", [*folders, "--layer", "no-such-layer"])
    assert error.value.code == 2
    with pytest.raises(SystemExit):
        delta_w_figure_script("rank", [str(tmp_path)])
