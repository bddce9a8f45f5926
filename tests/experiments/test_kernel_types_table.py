"""The kernel-types table: accuracies, per-seed gaps to fine-tuning and cost ratios from parsed JSON."""

from __future__ import annotations

from ntk_peft.experiments.kernel_types_table import fine_tuning_accuracy, kernel_types_table


def _results():
    accuracy = {13: {"full": 0.8, "row1": 0.7, "signgd:full": 0.9, "signgd:row1": 0.6, "zeroshot": 0.5},
                21: {"full": 0.6, "row1": 0.7, "signgd:full": 0.7, "signgd:row1": 0.8, "zeroshot": 0.5}}
    return {"task": "SST-2", "model": "m", "k": 16, "seeds": [13, 21], "kernel_subsets": ["full", "row1"],
            "kernel_types": {"ntk": {"solver": "klr", "output": "labels"},
                             "signgd": {"solver": "klr", "output": "difference"}},
            "per_seed": [{"seed": s, "accuracy": a} for s, a in accuracy.items()],
            "timing_s": {"train_dev_kernels_by_type": {"ntk": 10.0, "signgd": 35.0}}}


def _run(adapter, seed, accuracy):
    return {"config": {"adapter": adapter, "seed": seed}, "metrics": {"eval_accuracy": accuracy}}


def test_table_has_means_gaps_per_seed_and_cost_ratios():
    runs = [_run("row1", 13, 0.75), _run("row1", 21, 0.65), _run("row1", 87, 0.1)]  # seed 87: no kernel for it
    assert fine_tuning_accuracy(runs) == {"row1": {13: 0.75, 21: 0.65, 87: 0.1}}
    table = kernel_types_table(_results(), runs)
    lines = table.splitlines()
    assert "| full | 0.700 (0.100) | 0.800 (0.100) | - |" in lines
    assert "| row1 | 0.700 (0.000) | 0.700 (0.100) | 0.500 (0.286) (3 runs) |" in lines
    # gaps over seeds 13 and 21 only: NTK |0.7-0.75|, |0.7-0.65| -> 0.05 (0); SignGD |0.6-0.75|, |0.8-0.65| -> 0.15 (0)
    assert "| row1 | 2 | 0.050 (0.000) | 0.150 (0.000) |" in lines
    assert "| SignGD | 35 | 3.50 |" in lines
    assert "SignGD: klr on the difference output" in lines[0]


def test_table_without_fine_tuning_runs_has_no_gap_section():
    table = kernel_types_table(_results(), [])
    assert "Gap to Adam" not in table and "| row1 | 0.700 (0.000) | 0.700 (0.100) | - |" in table


def test_committed_table_regenerates_from_the_committed_files():
    """results/kernel-types-smollm2/table.md is exactly what its results.json and fine_tuning_runs.json give."""
    import json
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "results" / "kernel-types-smollm2"
    results = json.loads((folder / "results.json").read_text())
    runs = json.loads((folder / "fine_tuning_runs.json").read_text())
    assert sorted((r["config"]["adapter"], r["config"]["seed"]) for r in runs) == sorted(
        (a, s) for a in ("lora1", "row1") for s in results["seeds"])  # both adapters at every seed
    assert (folder / "table.md").read_text() == kernel_types_table(results, runs) + "\n"
