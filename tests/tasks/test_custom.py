"""Tasks of your own: CSV/TSV/JSON-lines files and folders, LM-BFF's k-shot sampling, one-line errors, and a CSV
task through ntk-compare end to end."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from ntk_peft.cli import compare
from ntk_peft.cli.common import run_cli
from ntk_peft.errors import UserError
from ntk_peft.tasks import custom_task, get_task, load_split, make_batch, sample_kshot
from ntk_peft.tasks.custom import read_task_file

WORDS = " negative, positive"  # single tokens for SmolLM2 and the tiny test models


def _reviews(n: int = 24, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    good = ["a warm , funny film", "sharp and moving", "the best picture this year", "a delight from start to end"]
    bad = ["a dull , lifeless mess", "tedious and flat", "the worst film this year", "an hour too long"]
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        text = (good if label == "pos" else bad)[int(rng.integers(4))] + f" ({i})"
        rows.append({"id": i, "sentence": text, "sentiment": label})
    return rows


def _write_csv(path, rows, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_a_csv_file_is_a_task_with_lm_bff_sampling_and_held_out_evaluation(tmp_path):
    path = _write_csv(tmp_path / "reviews.csv", _reviews())
    spec = custom_task(path, text_columns="sentence", label_column="sentiment", label_words=WORDS)
    assert spec.name == "reviews" and get_task("REVIEWS") is spec
    assert spec.labels == ("neg", "pos") and spec.causal_label_words == (" negative", " positive")
    split = load_split("reviews", k=4, seed=13)
    assert [sum(e.label == c for e in split.train) for c in (0, 1)] == [4, 4]
    assert len(split.dev) == 8 and len(split.eval) == 24 - 16
    ids = [e.id for e in split.train + split.dev + split.eval]
    assert len(set(ids)) == 24  # disjoint, and together the whole file
    expected_train, expected_dev = sample_kshot(read_task_file(spec, path), 4, 13, 2)  # LM-BFF's procedure
    assert split.train == expected_train and split.dev == expected_dev
    assert load_split("reviews", k=4, seed=21).train != split.train
    assert split.train[0].text_a.startswith(("a ", "sharp", "the ", "tedious", "an "))


def test_a_folder_with_train_dev_and_test_files_in_other_formats(tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    rows = [{"premise": r["sentence"], "hypothesis": "it is good", "gold": r["sentiment"]} for r in _reviews(20)]
    _write_csv(folder / "train.tsv", rows, delimiter="\t")
    _write_csv(folder / "dev.tsv", rows[:8], delimiter="\t")
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[10:15]))
    spec = custom_task(folder, text_columns=["premise", "hypothesis"], label_column="gold", label_words=WORDS,
                       template="{text_a} ?{mask} , {text_b}")
    assert spec.is_pair and spec.name == "pairs"
    split = load_split(spec, k=3, seed=42)
    assert len(split.train) == 6 and len(split.dev) == 6 and len(split.eval) == 5
    assert all(e.id.startswith("dev.tsv:") for e in split.dev) and split.eval[0].id == "test.jsonl:1"
    assert split.eval[0].text_b == "it is good"


@pytest.mark.parametrize("change,kwargs,match", [
    ("no-column", {"label_column": "label"}, r"has no column\(s\) \['label'\]; its header is \['id', 'sentence'"),
    ("words", {"label_words": " negative"}, r"2 labels \(neg, pos\) but 1 label words"),
    ("no-words", {"label_words": None}, "needs label words"),
    ("empty-text", {}, r"malformed data row at .*reviews.csv:3: no value for \['sentence'\]"),
    ("sst2", {"name": "sst2"}, "'sst2' is a built-in LM-BFF task"),
    ("suffix", {}, "is not .csv, .tsv or .jsonl"),
])
def test_bad_task_files_are_one_line(tmp_path, change, kwargs, match):
    rows = _reviews()
    if change == "empty-text":
        rows[1]["sentence"] = ""
    path = _write_csv(tmp_path / ("reviews.txt" if change == "suffix" else "reviews.csv"), rows)
    options = dict(text_columns="sentence", label_column="sentiment", label_words=WORDS)
    options.update(kwargs)
    with pytest.raises(UserError, match=match) as err:
        custom_task(path, **options)
    assert "\n" not in str(err.value)


def test_an_evaluation_label_outside_the_train_labels_is_one_line(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    rows = _reviews()
    _write_csv(folder / "train.csv", rows)
    _write_csv(folder / "test.csv", [{**rows[0], "sentiment": "meh"}])
    custom_task(folder, text_columns="sentence", label_column="sentiment", label_words=WORDS)
    with pytest.raises(UserError, match=r"malformed data row at .*test.csv:2: label 'meh' is not one of neg, pos"):
        load_split("odd", k=2, seed=1)


def test_a_csv_task_through_ntk_compare_and_zero_shot(capsys, tmp_path):
    import torch

    from ntk_peft import load_model

    path = _write_csv(tmp_path / "movie_reviews.csv", _reviews(30))
    args = ["--task", str(path), "--text-columns", "sentence", "--label-column", "sentiment", "--label-words", WORDS,
            "--template", "Review: {text_a}\nSentiment:{mask}"]
    code = run_cli(compare.main, [*args, "--subset", "row1", "--k", "4", "--seeds", "13", "--model", "tiny-llama",
                                  "--out", str(tmp_path / "run"), "--no-figures"])
    out, err = capsys.readouterr()
    assert code == 0, err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["task"] == "movie_reviews" and results["per_seed"][0]["n_eval"] == 30 - 16
    assert 0 <= results["summary"]["accuracy"]["row1"]["mean"] <= 1 and "K_row1" in out
    tokenizer = load_model("tiny-llama", dtype=torch.float64)[1]
    batch = make_batch(tokenizer, "movie_reviews", load_split("movie_reviews", 4, 13).train)
    assert batch["label_token_ids"].numel() == 2


def test_a_csv_task_trains_and_built_in_tasks_keep_their_prompt(capsys, tmp_path):
    from ntk_peft.cli import peft

    path = _write_csv(tmp_path / "shop_reviews.csv", _reviews(24))
    args = ["train", "--task", str(path), "--text-columns", "sentence", "--label-column", "sentiment",
            "--label-words", WORDS, "--adapter", "lora1", "--model", "tiny-llama", "--k", "4", "--steps", "2",
            "--out", str(tmp_path / "train")]
    code = run_cli(peft.main, args)
    out, err = capsys.readouterr()
    assert code == 0, err
    metrics = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert metrics["n_eval"] == 24 - 16 and "shop_reviews lora1" in out
    code = run_cli(peft.main, ["train", "--task", "sst2", "--label-words", WORDS, "--adapter", "lora1",
                               "--model", "tiny-llama", "--out", str(tmp_path / "x")])
    _, err = capsys.readouterr()
    assert code == 2 and "define a task of your own" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
