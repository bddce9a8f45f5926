"""ntk-peft figures: every figure from results folders, computing only what is missing (tiny model)."""

from __future__ import annotations

import pytest

from ntk_peft.cli import peft
from ntk_peft.cli.common import run_cli
from ntk_peft.experiments import figures
from ntk_peft.experiments.figures import FIGURE_NAMES, FigureSizes, make_all

TINY = FigureSizes(
    label="tiny", kernel_folder="sst2-tiny", kernel_k=4, kernel_seeds=(13,), kernel_max_eval=6,
    train_adapters=(("lora2", 5e-2), ("row1", 5e-2), ("lorma+2", 5e-2)), train_steps=2, train_track_every=1,
    train_track_layers=None, train_max_eval=4, bounds_folder="tiny-layer0", bounds_layers=(0,),
    bounds_types=("q", "o", "up"), bounds_budget_ranks=(1, 2), bounds_cp=False, model="tiny-llama", train_k=4)


def test_every_figure_with_caption_and_index_then_nothing_recomputed(tmp_path, monkeypatch):
    paths = make_all(tmp_path / "runs", tmp_path / "figs", sizes=TINY, progress=False)
    assert list(paths) == list(FIGURE_NAMES)
    for name, path in paths.items():
        assert path == tmp_path / "figs" / f"{name}.png" and path.stat().st_size > 10_000
        caption = path.with_suffix(".txt").read_text()
        assert len(caption) > 80
    index = (tmp_path / "figs" / "README.md").read_text()
    assert all(f"`{name}.png`" in index for name in FIGURE_NAMES)
    assert (tmp_path / "runs" / "ntk-compare" / "sst2-tiny" / "results.json").is_file()
    assert (tmp_path / "runs" / "train" / "sst2-lora2-k4-s42-tiny" / "delta_w_summary.json").is_file()
    assert (tmp_path / "runs" / "bounds" / "tiny-layer0" / "bounds.csv").is_file()

    def refuse(*args, **kwargs):
        raise AssertionError("existing results must only be read")

    monkeypatch.setattr("ntk_peft.experiments.compare.run_compare", refuse)
    monkeypatch.setattr("ntk_peft.train.train", refuse)
    monkeypatch.setattr("ntk_peft.experiments.bounds_study.bounds_study", refuse)
    again = make_all(tmp_path / "runs", tmp_path / "figs2", sizes=TINY, progress=False)
    assert all(p.is_file() for p in again.values())


def test_given_folders_are_used_and_checked(tmp_path, capsys):
    make_all(tmp_path / "runs", tmp_path / "figs", sizes=TINY, progress=False)
    runs = tmp_path / "runs"
    code = run_cli(peft.main, ["figures", "--results", str(tmp_path / "empty"), "--out", str(tmp_path / "given"),
                               "--kernels", str(runs / "ntk-compare" / "sst2-tiny"),
                               "--train-run", str(runs / "train" / "sst2-lora2-k4-s42-tiny"),
                               "--train-run", str(runs / "train" / "sst2-row1-k4-s42-tiny"),
                               "--bounds", str(runs / "bounds" / "tiny-layer0")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert all(f"{name}: " in out for name in FIGURE_NAMES)
    assert not (tmp_path / "empty").exists()  # nothing computed
    assert "lora2" in (tmp_path / "given" / "delta_w_rank.txt").read_text()


@pytest.mark.parametrize("option", ["--kernels", "--train-run", "--bounds"])
def test_a_folder_without_results_is_a_one_line_error(tmp_path, capsys, option):
    code = run_cli(peft.main, ["figures", "--results", str(tmp_path), option, str(tmp_path / "nothing")])
    out, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and option in err


def test_quick_and_full_sizes_keep_separate_folders():
    assert figures.QUICK.kernel_folder != figures.FULL.kernel_folder
    assert figures.QUICK.bounds_folder != figures.FULL.bounds_folder
    assert figures.QUICK.train_folder("lora4") != figures.FULL.train_folder("lora4")
