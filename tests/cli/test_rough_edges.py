"""What a new user runs into (issue 19): nothing written by a failed run, bad output paths, interrupts, messages."""

from __future__ import annotations

import json

import pytest
import torch

from ntk_peft.cli import compare, peft
from ntk_peft.cli.common import run_cli
from ntk_peft.tasks import load_split, make_batch

UNWRITABLE = "/proc/ntk-peft-out"  # not writable even for root (permission bits are not enough for root)


def _run(capsys, main, *argv):
    code = run_cli(main, list(argv), prog="ntk-peft" if main is peft.main else "ntk-compare")
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code, err, match):
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert match in err, err


@pytest.mark.parametrize("bad,match", [(["--targets", "banana"], "target 'banana' matches no Linear"),
                                       (["--adapter", "more4x999"], "more4x999")])
def test_a_failed_train_writes_nothing_and_the_corrected_rerun_runs(capsys, tmp_path, bad, match):
    out = tmp_path / "run"
    argv = ["train", "--task", "sst2", "--model", "tiny-llama", "--k", "4", "--steps", "1", "--max-eval", "4",
            "--out", str(out)]
    code, _, err = _run(capsys, peft.main, *argv, "--adapter", "lora1", *bad)
    _one_line_error(code, err, match)
    assert not out.exists()
    code, _, err = _run(capsys, peft.main, *argv, "--adapter", "lora1")
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["adapter"] == "lora1"


@pytest.mark.parametrize("where", ["file", "unwritable"])
@pytest.mark.parametrize("command", ["compare", "train", "bounds", "zeroshot"])
def test_bad_output_paths_fail_first_in_one_line(capsys, tmp_path, monkeypatch, command, where):
    target = tmp_path / "taken.txt" if where == "file" else UNWRITABLE
    if where == "file":
        target.write_text("not a folder")
    worked = []
    import ntk_peft.models

    monkeypatch.setattr(ntk_peft.models, "load_model", lambda *a, **k: worked.append(1))  # no work may start
    if command == "compare":
        code, _, err = _run(capsys, compare.main, "--task", "sst2", "--subset", "row1", "--model", "tiny-llama",
                            "--out", str(target))
    elif command == "train":
        code, _, err = _run(capsys, peft.main, "train", "--task", "sst2", "--adapter", "lora1", "--model",
                            "tiny-llama", "--out", str(target))
    elif command == "bounds":
        code, _, err = _run(capsys, peft.main, "bounds", "--random", "8x6", "--out", str(target))
    else:
        json_path = tmp_path if where == "file" else f"{UNWRITABLE}/r.json"  # a folder, or an unwritable place
        code, _, err = _run(capsys, peft.main, "zeroshot", "--task", "sst2", "--model", "tiny-llama",
                            "--json", str(json_path))
    expected = {"file": "is a f", "unwritable": "is not writable"}[where]
    _one_line_error(code, err, expected)
    assert not worked


def test_an_interrupt_says_how_to_resume_on_a_line_of_its_own(capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    assert run_cli(interrupted, [], prog="ntk-compare") == 130
    err = capsys.readouterr().err
    assert err.startswith("\ninterrupted") and "run the same command again to resume" in err


def test_a_warning_is_one_line_named_by_the_program(capsys):
    """E.g. TREC at k = 64 (a class short of 2k examples): one line, no source line under it."""
    import sys
    import warnings

    from ntk_peft.tasks import load_split

    def short_dev(argv):
        with warnings.catch_warnings(record=True) as caught:  # shown as Python shows it, past pytest's capture
            warnings.simplefilter("always")
            load_split("trec", 64, 87)
        for w in caught:
            sys.stderr.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line))

    before = warnings.formatwarning
    assert run_cli(short_dev, [], prog="ntk-peft") == 0
    err = capsys.readouterr().err
    assert err.startswith("ntk-peft: warning: k=64: class(es) [2] have fewer than 128 pool examples")
    assert err.count("\n") == 1 and warnings.formatwarning is before  # restored afterwards


def test_a_resumed_blocked_run_says_what_it_found(capsys, tmp_path):
    from ntk_peft import load_model
    from ntk_peft.ntk import KernelStore, kernel_blocks

    model, tok = load_model("tiny-llama", dtype=torch.float64, seed=0)
    train = load_split("sst2").train
    blocks = [make_batch(tok, "sst2", train[i : i + 2]) for i in (0, 2, 4)]
    store = KernelStore(tmp_path, {"model": "tiny-llama"})
    kernel_blocks(model, blocks[:2], None, ["row1"], store=store, name="train", progress=True)
    capsys.readouterr()
    kernel_blocks(model, blocks, None, ["row1"], store=KernelStore(tmp_path / "other", {}), name="train",
                  progress=True)
    assert "found stored" not in capsys.readouterr().err  # a fresh run says nothing
    (tmp_path / "blocks" / "train-0-1.safetensors").unlink()
    kernel_blocks(model, blocks[:2], None, ["row1"], store=KernelStore(tmp_path, {"model": "tiny-llama"}),
                  name="train", progress=True)
    assert "eNTK train blocks: 2 of 3 found stored (resuming), 1 to compute" in capsys.readouterr().err


def test_messages_a_new_user_met(capsys, tmp_path):
    empty = tmp_path / "empty-model"
    empty.mkdir()
    code, _, err = _run(capsys, peft.main, "zeroshot", "--task", "sst2", "--model", str(empty))
    _one_line_error(code, err, "it has no config.json")
    code, _, err = _run(capsys, peft.main, "bounds", "--random", "0x5")
    _one_line_error(code, err, "--random needs positive sizes M and N, got '0x5'")
    code, _, err = _run(capsys, peft.main, "bounds", "--random", "5by5")
    _one_line_error(code, err, "--random expects a shape MxN")
    code, _, err = _run(capsys, peft.main, "train", "--task", "sst2")  # argparse's own error, same prefix
    _one_line_error(code, err, "ntk-peft: error: the following arguments are required: --adapter")


def test_zero_shot_bars_name_their_split(capsys):
    code, _, err = _run(capsys, peft.main, "zeroshot", "--task", "sst2", "--model", "tiny-llama", "--max-examples", "4")
    assert code == 0 and "zero-shot SST-2 eval" in err


def test_train_shows_its_final_evaluation_and_compare_says_where_figures_went(capsys, tmp_path):
    code, _, err = _run(capsys, peft.main, "train", "--task", "sst2", "--adapter", "lora1", "--model", "tiny-llama",
                        "--k", "4", "--steps", "1", "--max-eval", "4", "--out", str(tmp_path / "train"))
    assert code == 0 and "evaluate SST-2" in err
    code, out, err = _run(capsys, compare.main, "--task", "sst2", "--subset", "row1", "--model", "tiny-llama",
                          "--k", "4", "--seeds", "13", "--max-eval", "4", "--out", str(tmp_path / "compare"))
    assert code == 0, err
    assert f"figures: {tmp_path / 'compare' / 'figures'}" in out
    assert (tmp_path / "compare" / "figures" / "kernel_heatmaps.png").is_file()


def test_a_closed_pipe_ends_quietly(tmp_path):
    """``ntk-peft study rocoft --status | head -1``: no traceback when the reader leaves early."""
    import subprocess
    import sys

    command = (f"{sys.executable} -m ntk_peft.cli.peft study rocoft --status --results {tmp_path / 'r'} "
               f"| head -1")
    done = subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], capture_output=True, text=True, timeout=300)
    assert done.stdout.startswith("pending  kernels SST-2 k=16")
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
