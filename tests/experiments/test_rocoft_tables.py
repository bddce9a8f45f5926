"""The RoCoFT comparison table: our numbers and the paper's, side by side."""

from __future__ import annotations

from ntk_peft.experiments.rocoft_tables import PAPER_ACCURACY, rocoft_table


def _results(task: str, subsets: list[str], accuracy: float) -> dict:
    stat = {"mean": accuracy, "std": 0.01}
    return {"task": task, "subsets": ["full", *subsets], "timing_s": {"total": 7200.0},
            "per_seed": [{"n_eval": 872}],
            "summary": {"accuracy": {n: stat for n in ["full", *subsets, "zeroshot"]},
                        "relative_difference": {s: {"p1": {"mean": 0.1, "std": 0.01},
                                                    "p2": {"mean": 0.2, "std": 0.02}} for s in subsets}}}


def test_rows_put_each_value_beside_the_papers():
    table = rocoft_table([_results("SST-2", ["row1", "col1"], 0.8), _results("QQP", ["row1", "lora1"], 0.6)])
    lines = table.splitlines()
    assert lines[0].startswith("| task | n eval | zero-shot | K_full (paper) | K_row1 (paper) | K_col1 (paper) |")
    assert len(lines) == 4
    sst2 = lines[2].split(" | ")
    assert sst2[3] == f"80.0 (1.0) ({PAPER_ACCURACY['SST-2']['full']})"
    assert "0.100 (0.010) (0.093 (0.008))" in lines[2] and "0.200 (0.020) (0.130 (0.014))" in lines[2]
    assert lines[2].rstrip(" |").endswith("2.00")
    qqp = lines[3]
    assert "- (" in qqp  # QQP has no K_col1 result here
    assert "0.100 (0.010) (-)" in qqp  # the paper gives no LoRA difference
