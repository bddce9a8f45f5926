"""`ntk-peft bounds` end to end on random matrices and a tiny model: rows, stacks, reuse, errors."""

from __future__ import annotations

import csv

import pytest

from ntk_peft.cli import peft
from ntk_peft.cli.common import run_cli


def _run(capsys, *argv):
    code = run_cli(peft.main, ["bounds", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _rows(folder):
    with (folder / "bounds.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_random_matrices_table_figure_and_reuse(capsys, tmp_path):
    code, out, err = _run(capsys, "--random", "24x16", "--spectrum", "power:1", "--count", "2",
                          "--budget-ranks", "1,2", "--out", str(tmp_path))
    assert code == 0, err
    assert "low rank beats Monarch" in out
    rows = _rows(tmp_path)
    assert {r["class"] for r in rows} == {"lowrank", "monarch", "rows", "cols"}
    assert len({r["matrix"] for r in rows}) == 2
    assert all(int(r["params"]) <= int(r["budget"]) for r in rows)
    assert (tmp_path / "monarch_vs_lowrank.png").stat().st_size > 10_000
    # power-law spectra: Eckart-Young is optimal among all rank-R matrices, so low rank is at least as good
    # as any class whose members at this budget have rank <= R (rows, columns)
    by = {(r["matrix"], r["budget_rank"], r["class"]): float(r["relative_error"]) for r in rows}
    for (name, rank, kind), error in by.items():
        if kind in ("rows", "cols"):
            assert by[(name, rank, "lowrank")] <= error + 1e-12
    code, _, err = _run(capsys, "--random", "24x16", "--spectrum", "power:1", "--count", "2",
                        "--budget-ranks", "1,2", "--out", str(tmp_path))
    assert code == 0, err
    assert _rows(tmp_path) == rows  # read back, nothing appended twice
    from ntk_peft.plotting import bounds_figure_script

    assert bounds_figure_script([str(tmp_path), "--out", str(tmp_path / "again.png")]).stat().st_size > 10_000


def test_model_weights_with_cp_on_stacks(capsys, tmp_path):
    code, out, err = _run(capsys, "--model", "tiny-llama", "--layers", "0,1", "--types", "q,o", "--budget-ranks", "2",
                          "--out", str(tmp_path))
    assert code == 0, err
    rows = _rows(tmp_path)
    stacks = {(r["matrix"], r["class"]) for r in rows if "stack" in r["matrix"]}
    assert ("q stack", "cp") in stacks and ("q stack", "lowrank") in stacks and ("o stack", "monarch") in stacks
    cp = next(r for r in rows if r["matrix"] == "q stack" and r["class"] == "cp")
    assert int(cp["params"]) <= int(cp["budget"]) and 0 < float(cp["relative_error"]) < 1


@pytest.mark.parametrize("argv,match", [
    (["--random", "0x5"], "needs positive sizes M and N"),
    (["--random", "5by5"], "expects a shape MxN"),
    (["--random", "8x8", "--spectrum", "zipf"], "bad spectrum"),
    (["--random", "8x8", "--budget-ranks", "0"], "must be positive"),
    (["--types", "q,x", "--model", "tiny-llama"], "unknown matrix type 'x'"),
    (["--run", "/nonexistent/run"], "is not a finished training run"),
])
def test_bad_input_is_one_line_and_status_2(capsys, tmp_path, argv, match):
    code, _, err = _run(capsys, *argv, "--out", str(tmp_path / "x"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert match in err


def test_linear_model_experiment_from_the_command_line(capsys, tmp_path):
    code, out, err = _run(capsys, "--linear-model", "8", "--depth", "2", "--out", str(tmp_path))
    assert code == 0, err
    assert "bound |P|_F" in out and (tmp_path / "linear_model.csv").is_file()
    with (tmp_path / "linear_model.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert all(float(r["projection_error"]) <= float(r["bound_spectral"]) * (1 + 1e-10) + 1e-12 * float(r["initial_error"])
               for r in rows)  # lowrank 8 at d = 8 fits exactly: bound 0, error at rounding level
    code, _, err = _run(capsys, "--linear-model", "10")
    assert code == 2 and "divisible by 4" in err
