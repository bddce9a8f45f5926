"""Data loading of all 15 tasks, k-shot sampling, and bad data folders/rows."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from ntk_peft.errors import UserError
from ntk_peft.tasks import TASKS, get_task, load_split, sample_kshot
from ntk_peft.tasks.data import Example, read_examples, read_pool, resolve_data_dir

# Evaluation-set sizes of the shipped data (test files; pools/dev.json for MNLI, SNLI, QQP).
EVAL_SIZES = {"SST-2": 872, "sst-5": 2210, "mr": 2000, "cr": 2000, "mpqa": 2000, "subj": 2000,
              "trec": 500, "CoLA": 1043, "MNLI": 1000, "SNLI": 1000, "QNLI": 5463, "RTE": 277,
              "MRPC": 408, "QQP": 1000, "STS-B": 1500}


@pytest.mark.parametrize("spec", TASKS, ids=lambda s: s.name)
def test_every_task_loads_shipped_16_shot(spec, data_dir):
    split = load_split(spec.aliases[0], k=16, seed=42)
    for part in (split.train, split.dev):
        assert Counter(e.label for e in part) == {c: 16 for c in range(spec.num_classes)}
    assert len(split.eval) == EVAL_SIZES[spec.name]
    assert {e.label for e in split.eval} <= set(range(spec.num_classes))
    for example in split.train + split.dev + split.eval:
        assert isinstance(example.text_a, str)
        assert (example.text_b is not None) == spec.is_pair
    ids = [set(e.id for e in part) for part in (split.train, split.dev, split.eval)]
    assert sum(map(len, ids)) == len(split.train) + len(split.dev) + len(split.eval)
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])


def test_aliases_resolve_to_one_task():
    assert get_task("sst2") is get_task("SST-2") is get_task("Sst-2")
    assert get_task("stsb").name == "STS-B"
    assert get_task("mnli").dev_file == "dev_matched"


def test_file_formats_parse_their_quirks(data_dir):
    mrpc = read_examples("MRPC", data_dir / "k-shot/MRPC/16-42/train.tsv", data_dir)
    assert mrpc[0].text_a.startswith("Tibco") and mrpc[0].label == 1  # BOM header handled
    cola = read_examples("CoLA", data_dir / "k-shot/CoLA/16-42/train.tsv", data_dir)
    assert len(cola) == 32 and cola[0].id == "k-shot/CoLA/16-42/train.tsv:1"
    mnli = load_split("mnli", 16, 13)
    assert mnli.dev[0].id.startswith("k-shot/MNLI/16-13/dev_matched.tsv")
    assert mnli.eval[0].id.startswith("pools/MNLI/dev.json#")
    csv_rows = read_examples("mr", data_dir / "k-shot/mr/16-42/train.csv", data_dir)
    assert any("," in e.text_a for e in csv_rows)  # quoted commas stay inside the text


def test_stsb_is_split_at_2_5_as_lm_bff(data_dir):
    spec = get_task("stsb")
    assert spec.label_index("2.5") == 1 and spec.label_index("2.499") == 0 and spec.label_index("5.000") == 1
    split = load_split("stsb")
    assert Counter(e.label for e in split.train) == {0: 16, 1: 16}


@pytest.mark.parametrize("task,k", [("sst2", 64), ("trec", 32), ("mnli", 512)])
def test_sampled_kshot_is_deterministic_balanced_and_disjoint(task, k):
    spec = get_task(task)
    first, again = load_split(task, k=k, seed=13), load_split(task, k=k, seed=13)
    other = load_split(task, k=k, seed=21)
    assert [e.id for e in first.train] == [e.id for e in again.train]
    assert [e.id for e in first.dev] == [e.id for e in again.dev]
    assert {e.id for e in first.train} != {e.id for e in other.train}
    for part in (first.train, first.dev):
        assert Counter(e.label for e in part) == {c: k for c in range(spec.num_classes)}
    train, dev, evaluation = ({e.id for e in p} for p in (first.train, first.dev, first.eval))
    assert len(train) == len(first.train) and len(dev) == len(first.dev)
    assert not (train & dev) and not (train & evaluation) and not (dev & evaluation)
    assert all(e.id.startswith(f"pools/{spec.name}/train.json#") for e in first.train + first.dev)


def test_sampling_follows_lm_bff_on_raw_lines(data_dir):
    """Re-run LM-BFF's generate_k_shot_data loop on the raw JSON lines."""
    raw = json.loads((data_dir / "pools/SST-2/train.json").read_text())
    lines = list(raw.items())
    np.random.seed(87)
    order = np.random.permutation(len(lines))  # same stream as np.random.shuffle on a list
    by_label: dict[str, list[str]] = {}
    for i in order:
        key, item = lines[i]
        by_label.setdefault(str(item["label"]), []).append(key)
    expect_train = [key for keys in by_label.values() for key in keys[:64]]
    expect_dev = [key for keys in by_label.values() for key in keys[64:128]]
    split = load_split("sst2", k=64, seed=87)
    assert [e.id.split("#")[1] for e in split.train] == expect_train
    assert [e.id.split("#")[1] for e in split.dev] == expect_dev


def test_load_split_returns_fresh_lists():
    a = load_split("sst2")
    a.train.clear()
    assert len(load_split("sst2").train) == 32


def test_k_larger_than_pool_allows_is_a_user_error():
    with pytest.raises(UserError, match="largest possible k is 75"):
        load_split("trec", k=76)  # trec's smallest class (ABBR) has 75 examples


def test_a_class_short_of_2k_gets_a_short_dev_as_in_lm_bff():
    """TREC at k = 64: ABBR has 75 pool examples, so 64 train and the 11 left as dev (LM-BFF's slicing)."""
    with pytest.warns(UserWarning, match="fewer than 128 pool examples"):
        split = load_split("trec", k=64, seed=21)
    train = np.bincount([e.label for e in split.train])
    dev = np.bincount([e.label for e in split.dev])
    assert train.tolist() == [64] * 6
    assert dev.tolist() == [64, 64, 11, 64, 64, 64]
    assert not {e.id for e in split.train} & {e.id for e in split.dev}


def test_sample_kshot_rejects_small_pool():
    pool = [Example(str(i), "x", None, i % 2) for i in range(6)]
    with pytest.raises(UserError, match="needs 4 examples per class"):
        sample_kshot(pool, 4, 0, 2)
    train, dev = sample_kshot(pool, 2, 0, 2)  # 3 per class: 2 train, 1 dev each
    assert len(train) == 4 and len(dev) == 2


def test_data_dir_resolution(tmp_path, monkeypatch, data_dir):
    monkeypatch.delenv("NTK_PEFT_DATA", raising=False)
    assert resolve_data_dir() == data_dir
    with pytest.raises(UserError, match="no LM-BFF data folder .* pass --data-dir or set \\$NTK_PEFT_DATA"):
        resolve_data_dir(tmp_path / "nowhere")
    monkeypatch.setenv("NTK_PEFT_DATA", str(tmp_path))
    with pytest.raises(UserError, match=r"from \$NTK_PEFT_DATA"):
        resolve_data_dir()


def _write(root, rel, text):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_malformed_rows_name_file_and_line(tmp_path):
    tsv = _write(tmp_path, "a.tsv", "sentence\tlabel\ngood film\t1\nbad film\n")
    with pytest.raises(UserError, match=r"a\.tsv:3: expected 2 tab-separated columns, got 1"):
        read_examples("sst2", tsv)
    bad_label = _write(tmp_path, "b.tsv", "sentence\tlabel\ngood film\t7\n")
    with pytest.raises(UserError, match=r"b\.tsv:2: label '7' is not one of 0, 1"):
        read_examples("sst2", bad_label)
    csv_file = _write(tmp_path, "c.csv", '1,"fine"\n0\n')
    with pytest.raises(UserError, match=r"c\.csv:2: expected 2 columns"):
        read_examples("mr", csv_file)
    header = _write(tmp_path, "d.tsv", "text\tlabel\nx\t1\n")
    with pytest.raises(UserError, match=r"d\.tsv:1: header lacks column\(s\) \['sentence'\]"):
        read_examples("sst2", header)
    cola = _write(tmp_path, "e.tsv", "src\t1\t\tok\nsrc\t1\n")
    with pytest.raises(UserError, match=r"e\.tsv:2: expected 4"):
        read_examples("cola", cola)
    pool = _write(tmp_path, "f.json", '{"0": {"text_a": "x", "label": "1"}, "1": {"text_a": "y"}}')
    with pytest.raises(UserError, match=r"f\.json#1: needs text_a and label"):
        read_pool("sst2", pool)
    broken = _write(tmp_path, "g.json", '{"0": {"text_a": "x",\n "label": }}')
    with pytest.raises(UserError, match=r"g\.json:2: invalid JSON"):
        read_pool("sst2", broken)
    stsb = _write(tmp_path, "h.tsv", "sentence1\tsentence2\tscore\na\tb\tnan-ish\n")
    with pytest.raises(UserError, match=r"h\.tsv:2: label 'nan-ish' is not one of a number"):
        read_examples("stsb", stsb)


def test_missing_shipped_seed_lists_the_valid_ones():
    with pytest.raises(UserError, match="seeds with shipped splits: 13, 21, 42, 87, 100"):
        load_split("sst2", k=16, seed=7)
