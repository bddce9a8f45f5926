"""RoCoFT's reported values (its tables 5 and 6, RoBERTa-base), as printed: accuracy in %, mean (std) over 5 seeds.

Read from ../shared/papers/rocoft-row-column-finetuning.txt, whose table text is partly garbled: cells
are placed by their tab positions. Left out where the text does not say which row a value belongs to:
the k = 64 K_θR and K_θC rows of the pair tasks (one of the two survives, unlabelled), and K_LoRA at
k = 64 (not reported). Methods: ``finetune`` (the "Full FT" row), ``full`` (K_θ), ``row1`` (K_θR),
``col1`` (K_θC), ``lora1`` (K_LoRA, LoRA rank 1).
"""

from __future__ import annotations

SINGLE_TASKS = ("SST-2", "sst-5", "mr", "cr", "mpqa", "subj", "trec")
PAIR_TASKS = ("MNLI", "SNLI", "QNLI", "RTE", "MRPC", "QQP")
# The paper's spelling of each task (the keys are the toolkit's task names, as in the data folders).
PAPER_NAMES = {"sst-5": "SST-5", "mr": "MR", "cr": "CR", "mpqa": "MPQA", "subj": "Subj", "trec": "TREC"}


def paper_name(task: str) -> str:
    """``sst-5`` -> ``SST-5``; names the paper spells as we do are returned unchanged."""
    return PAPER_NAMES.get(task, task)


def _row(tasks: tuple[str, ...], cells: str) -> dict[str, str]:
    """``"89.0(1.5) 44.6(1.4) ..."`` over ``tasks`` -> task -> ``"89.0 (1.5)"``; ``-`` skips a task."""
    values = cells.split()
    assert len(values) == len(tasks), (tasks, cells)
    return {t: v.replace("(", " (") for t, v in zip(tasks, values) if v != "-"}


def _merge(*rows: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for row in rows:
        out.update(row)
    return out


# Table 5: k -> method -> task -> "mean (std)" in %.
TABLE5: dict[int, dict[str, dict[str, str]]] = {
    16: {
        "finetune": _merge(_row(SINGLE_TASKS, "89.0(1.5) 44.6(1.4) 83.2(2.4) 93.3(0.2) 83.3(1.3) 88.5(2.6) 80.3(7.2)"),
                           _row(PAIR_TASKS, "59.2(2.7) 65.7(2.7) 62.1(3.1) 60.0(5.5) 73.9(2.7) 62.1(2.3)")),
        "full": _merge(_row(SINGLE_TASKS, "88.3(0.3) 43.6(2.2) 84.7(1.5) 93.2(0.9) 76.4(2.7) 88.6(1.3) 56.0(9.2)"),
                       _row(PAIR_TASKS, "53.0(3.0) 57.8(2.3) 60.1(3.3) 60.0(4.7) 73.4(5.6) 58.2(0.9)")),
        "row1": _merge(_row(SINGLE_TASKS, "88.5(0.4) 42.9(1.9) 83.9(1.2) 93.2(0.5) 77.3(2.1) 85.8(1.2) 51.6(3.9)"),
                       _row(PAIR_TASKS, "51.1(2.8) 56.0(1.8) 59.6(2.3) 58.6(6.0) 69.3(5.9) 57.1(3.3)")),
        "col1": _merge(_row(SINGLE_TASKS, "88.6(2.4) 42.4(1.9) 84.6(1.0) 93.2(0.5) 77.6(2.0) 85.9(1.2) 51.2(6.7)"),
                       _row(PAIR_TASKS, "51.9(2.7) 56.4(1.8) 59.2(2.6) 58.1(5.6) 69.2(4.7) 58.4(1.7)")),
        "lora1": _merge(_row(SINGLE_TASKS, "88.5(0.7) - 84.5(1.4) 93.2(0.5) - - -"),
                        _row(PAIR_TASKS, "- - 59.9(3.0) 58.8(4.7) - 58.2(2.6)")),
    },
    64: {
        "finetune": _merge(_row(SINGLE_TASKS, "89.7(0.4) 45.8(2.1) 85.6(1.1) 94.3(0.5) 84.8(0.8) 92.9(0.5) 93.2(1.0)"),
                           _row(PAIR_TASKS, "68.7(1.7) 77.3(0.9) 72.8(2.2) 68.9(2.5) 82.8(1.2) 69.2(1.3)")),
        "full": _merge(_row(SINGLE_TASKS, "89.2(1.0) 46.0(1.3) 86.4(0.6) 93.7(0.4) 81.2(0.9) 91.4(0.7) 77.8(2.3)"),
                       _row(PAIR_TASKS, "60.4(1.8) 65.5(1.6) 67.3(1.6) 66.5(2.5) 79.2(2.5) 66.4(1.7)")),
        "row1": _row(SINGLE_TASKS, "89.5(0.5) 46.0(1.5) 86.4(0.6) 93.9(0.6) 81.6(0.7) 90.4(0.4) 70.4(1.6)"),
        "col1": _row(SINGLE_TASKS, "89.5(0.6) 45.9(1.5) 86.4(0.4) 93.9(0.6) 81.5(0.5) 90.5(0.6) 70.7(2.5)"),
    },
}

# Table 6, k = 16: relative difference to K_θ after normalisation, subset -> p -> task -> "mean (std)".
TABLE6: dict[str, dict[int, dict[str, str]]] = {
    "row1": {
        1: _merge(_row(SINGLE_TASKS, "0.093(0.008) 0.083(0.005) 0.064(0.006) 0.087(0.007) 0.123(0.012) 0.061(0.005) "
                                     "0.181(0.007)"),
                  _row(PAIR_TASKS, "0.177(0.011) 0.198(0.039) 0.076(0.028) 0.140(0.019) 0.073(0.009) 0.046(0.008)")),
        2: _merge(_row(SINGLE_TASKS, "0.130(0.014) 0.113(0.012) 0.092(0.011) 0.126(0.021) 0.182(0.017) 0.073(0.008) "
                                     "0.197(0.008)"),
                  _row(PAIR_TASKS, "0.260(0.043) 0.255(0.069) 0.149(0.071) 0.203(0.039) 0.096(0.016) 0.063(0.013)")),
    },
    "col1": {
        1: _merge(_row(SINGLE_TASKS, "0.091(0.008) 0.077(0.004) 0.061(0.006) 0.084(0.006) 0.123(0.014) 0.055(0.005) "
                                     "0.166(0.007)"),
                  _row(PAIR_TASKS, "0.176(0.013) 0.194(0.040) 0.073(0.028) 0.142(0.023) 0.073(0.010) 0.044(0.006)")),
        2: _merge(_row(SINGLE_TASKS, "0.127(0.016) 0.108(0.012) 0.089(0.011) 0.122(0.018) 0.184(0.018) 0.069(0.009) "
                                     "0.185(0.008)"),
                  _row(PAIR_TASKS, "0.262(0.050) 0.253(0.072) 0.146(0.071) 0.212(0.047) 0.096(0.016) 0.061(0.011)")),
    },
}
