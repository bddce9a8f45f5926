"""ntk-peft: zero-shot output, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from ntk_peft.cli import peft
from ntk_peft.cli.common import run_cli


def _run(capsys, *argv):
    code = run_cli(peft.main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_zeroshot_prints_accuracy_last(capsys, tmp_path):
    out_json = tmp_path / "r.json"
    code, out, _ = _run(capsys, "zeroshot", "--task", "sst2", "--model", "tiny-bert",
                        "--max-examples", "12", "--json", str(out_json))
    assert code == 0
    assert torch.is_grad_enabled()  # the command must not switch autograd off for its caller
    last = out.strip().splitlines()[-1]
    assert last.startswith("accuracy: ")
    result = json.loads(out_json.read_text())
    assert result["examples"] == 12 and float(last.split()[1]) == pytest.approx(result["accuracy"], abs=1e-4)


@pytest.mark.parametrize("argv,match", [
    (["zeroshot", "--task", "sst7"], "unknown task 'sst7'; valid tasks: SST-2 (sst2)"),
    (["zeroshot", "--task", "sst2", "--model", "nosuch"], "unknown model 'nosuch'; valid:"),
    (["zeroshot", "--task", "sst2", "--model", "tiny-bert", "--data-dir", "/nonexistent"],
     "no LM-BFF data folder at /nonexistent"),
    (["zeroshot", "--task", "sst2", "--model", "tiny-llama", "--label-words", " bad, zyzzyva"],
     "label word ' zyzzyva' is unknown"),
    (["zeroshot", "--task", "sst2", "--model", "tiny-llama", "--template", "{text_a} {oops}{mask}"],
     "unknown placeholder {oops}"),
    (["zeroshot", "--task", "sst2", "--max-examples", "0"], "expected a positive integer, got 0"),
    (["zeroshot"], "the following arguments are required: --task"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_input_is_one_line_and_status_2(capsys, argv, match):
    code, out, err = _run(capsys, *argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert match in err


def test_malformed_data_row_names_file_and_line(capsys, tmp_path):
    folder = tmp_path / "k-shot" / "SST-2" / "16-42"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text("sentence\tlabel\nfine\t1\nbroken row\n")
    code, _, err = _run(capsys, "zeroshot", "--task", "sst2", "--model", "tiny-bert",
                        "--split", "train", "--data-dir", str(tmp_path))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "train.tsv:3: expected 2 tab-separated columns" in err


def test_multi_token_label_word_on_smollm2(capsys, smollm2):
    code, _, err = _run(capsys, "zeroshot", "--task", "sst2", "--label-words", " bad, antidisestablishmentarianism",
                        "--max-examples", "2")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "label word ' antidisestablishmentarianism' is" in err and "single token" in err


def test_console_script_exit_status():
    """The real process: status 2 and no traceback."""
    proc = subprocess.run([sys.executable, "-m", "ntk_peft.cli.peft", "zeroshot", "--task", "nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "unknown task 'nope'" in proc.stderr


def test_params_table_on_roberta_base_shapes(capsys):
    code, out, _ = _run(capsys, "params", "--model", "roberta-base-shape", "--adapter", "row1",
                        "--adapter", "row3", "--adapter", "cp4")
    assert code == 0
    rows = {line.split()[0]: line.split()[2] for line in out.splitlines()[2:]}
    assert rows == {"row1": "82,944", "row3": "248,832", "cp4": f"{(768 + 64 + 12 + 12 + 4) * 4:,}"}


@pytest.mark.parametrize("spec,match", [
    ("row0", "bad adapter spec 'row0'"), ("rowx", "bad adapter spec 'rowx'"), ("lora", "bad adapter spec 'lora'"),
    ("more0x4", "bad adapter spec 'more0x4'"), ("row1:best", "unknown selection 'best'"),
    ("lora99", "rank 99 is larger than min(d_out, d_in)"), ("row40", "rank 40 is larger than the 32 rows"),
    ("more4x99", "block rank 99 exceeds the block size"),
])
def test_bad_adapter_specs_exit_2_with_one_line(capsys, spec, match):
    code, _, err = _run(capsys, "params", "--model", "tiny-llama", "--adapter", spec)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert match in err
