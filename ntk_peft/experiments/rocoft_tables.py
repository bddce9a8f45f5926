"""RoCoFT tables 5 and 6 from several ``ntk-compare`` results, beside the paper's RoBERTa-base numbers.

`rocoft_table(results)` is a Markdown table, one row per task: KLR accuracy
mean (std) over seeds for K_full, each K_S and zero-shot, and the relative
kernel differences (p = 1, 2), each followed by the value RoCoFT reports for
RoBERTa-base at k = 16 where the paper has one (its tables 5 and 6; ``-``
where it has none). Pure formatting: results come in as parsed results.json.
"""

from __future__ import annotations

from ntk_peft.experiments.rocoft_paper import TABLE5, TABLE6

# Task -> subset -> RoCoFT's value at k = 16 (tables 5 and 6, `ntk_peft.experiments.rocoft_paper`).
PAPER_ACCURACY = {task: {m: TABLE5[16][m][task] for m in ("full", "row1", "col1", "lora1") if task in TABLE5[16][m]}
                  for task in TABLE5[16]["full"]}
PAPER_DIFFERENCE = {task: {s: (TABLE6[s][1][task], TABLE6[s][2][task]) for s in TABLE6} for task in TABLE6["row1"][1]}


def _stat(stats: dict, scale: float = 1.0, digits: int = 1) -> str:
    return f"{stats['mean'] * scale:.{digits}f} ({stats['std'] * scale:.{digits}f})"


def rocoft_table(results: list[dict]) -> str:
    """Markdown: accuracy (%) and relative differences per task, ours then RoCoFT's RoBERTa-base value."""
    subsets = []
    for r in results:
        subsets += [s for s in r["subsets"] if s != "full" and s not in subsets]
    names = ["full", *subsets]
    header = ["task", "n eval", "zero-shot"]
    header += [f"K_{n} (paper)" for n in names]
    header += [f"K_{s} p={p} (paper)" for s in subsets for p in (1, 2)]
    header += ["hours"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        task, summary = r["task"], r["summary"]
        paper_acc, paper_diff = PAPER_ACCURACY.get(task, {}), PAPER_DIFFERENCE.get(task, {})
        cells = [task, str(r["per_seed"][0]["n_eval"]), _stat(summary["accuracy"]["zeroshot"], 100)]
        for n in names:
            ours = _stat(summary["accuracy"][n], 100) if n in summary["accuracy"] else "-"
            cells.append(f"{ours} ({paper_acc.get(n, '-')})")
        for s in subsets:
            for p, k in ((1, 0), (2, 1)):
                diff = summary["relative_difference"].get(s)
                ours = _stat(diff[f"p{p}"], digits=3) if diff else "-"
                cells.append(f"{ours} ({paper_diff[s][k] if s in paper_diff else '-'})")
        cells.append(f"{r['timing_s']['total'] / 3600:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
