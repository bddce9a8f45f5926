"""The RoCoFT study's report: tables 5 and 6, the selection ablation and the figures, from its results folder.

`report_section(folder)` is the README's generated part, a pure function of the committed files
(``<TASK>-k<k>/results.json``, ``fine_tuning.json``; see `ntk_peft.experiments.rocoft_study`), so a
test regenerates it bit for bit. Every cell is ours, then RoCoFT's RoBERTa-base value in brackets;
a cell whose runs are not finished says ``pending`` (or how many seeds it has), never a number from
elsewhere. `write_report(folder)` rewrites that part of README.md and redraws the figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ntk_peft.errors import UserError
from ntk_peft.experiments.rocoft_paper import PAIR_TASKS, SINGLE_TASKS, TABLE5, TABLE6, paper_name
from ntk_peft.experiments.rocoft_study import ABLATION_SUBSETS, FINE_TUNING_LR, TABLE_SUBSETS
from ntk_peft.io import write_text
from ntk_peft.solvers import LAMBDA_GRID
from ntk_peft.tasks import get_task

BEGIN = "<!-- BEGIN GENERATED: python figures/rocoft_study.py results/rocoft-smollm2 (do not edit by hand) -->"
END = "<!-- END GENERATED -->"
KS = (16, 64)
FINE_TUNING_NAMES = {"full": "Full FT", "lora1": "LoRA-1 FT", "row1": "Row-1 FT"}


def load_study(folder: str | Path) -> dict[tuple[str, int], dict]:
    """(task, k) -> ``{"results": ..., "fine_tuning": ..., "kernel_seeds": [...]}`` (any may be missing) for
    every task folder; ``kernel_seeds``: the results of per-seed kernel jobs not yet combined."""
    study: dict[tuple[str, int], dict] = {}
    for task in (*SINGLE_TASKS, *PAIR_TASKS):
        for k in KS:
            entry = {}
            for name in ("results", "fine_tuning"):
                path = Path(folder) / f"{task}-k{k}" / f"{name}.json"
                if path.is_file():
                    entry[name] = json.loads(path.read_text())
            records = sorted(Path(folder).glob(f"{task}-k{k}/kernel-seeds/seed-*.json"))
            if records and "results" not in entry:
                entry["kernel_seeds"] = [json.loads(path.read_text())["results"] for path in records]
            if entry:
                study[task, k] = entry
    return study


def _mean_std(values: list[float], scale: float, digits: int) -> str:
    std = float(np.std(values)) if len(values) > 1 else 0.0
    return f"{np.mean(values) * scale:.{digits}f} ({std * scale:.{digits}f})"


def balanced_accuracy(confusion) -> float:
    """Mean per-class recall of C x C counts (rows: the true class, columns: the predicted one)."""
    confusion = np.asarray(confusion)
    return float(np.mean(np.diag(confusion) / confusion.sum(1)))


def _seeds_note(count: int, expected: int) -> str:
    return "" if count == expected else f" n={count}"


def fine_tuning_accuracy(entry: dict | None, adapter: str) -> str:
    """Our fine-tuning accuracy (%) of one adapter over the seeds run so far (``n=`` when not all are)."""
    runs = (entry or {}).get("fine_tuning", {}).get("runs", {}).get(adapter, {})
    if not runs:
        return "pending"
    expected = len(entry["results"]["seeds"]) if "results" in entry else 5
    return _mean_std([r["eval_accuracy"] for r in runs.values()], 100, 1) + _seeds_note(len(runs), expected)


def kernel_accuracy(entry: dict | None, name: str) -> str:
    """Our kernel model's accuracy (%) over seeds; ``name`` is a kernel subset or ``zeroshot``."""
    values = [r["accuracy"][name] for r in (entry or {}).get("results", {}).get("per_seed", [])
              if name in r["accuracy"]]
    return _mean_std(values, 100, 1) if values else "pending"


def difference_cell(entry: dict | None, subset: str, p: int, task: str, k: int = 16) -> str:
    """Our relative difference ‖K_S/‖K_S‖_p − K/‖K‖_p‖_p, then the paper's (it has k = 16 only)."""
    paper = TABLE6.get(subset, {}).get(p, {}).get(task) if k == 16 else None
    ours = "pending"
    if entry is not None and "results" in entry:
        values = [r["relative_difference"][subset][f"p{p}"] for r in entry["results"]["per_seed"]
                  if subset in r["relative_difference"]]
        if values:
            ours = _mean_std(values, 1, 3)
    return ours if paper is None else f"{ours} [{paper}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


# Table 5's rows: (label, where ours comes from, which of our results, the paper's method or None).
TABLE5_ROWS = (
    *[(FINE_TUNING_NAMES[a], "fine_tuning", a, "finetune" if a == "full" else None) for a in FINE_TUNING_LR],
    *[("K_θ (full)" if s == "full" else f"K_{s}", "kernels", s, s) for s in TABLE_SUBSETS],
    ("zero-shot", "kernels", "zeroshot", None),
)


def table5(study: dict, k: int, tasks: tuple[str, ...]) -> list[str]:
    """Table 5 for ``tasks`` at ``k``: accuracy % mean (std) over seeds [the paper's, ``-`` if none]."""
    rows = []
    for label, source, name, paper in TABLE5_ROWS:
        cells = []
        for task in tasks:
            entry = study.get((task, k))
            ours = fine_tuning_accuracy(entry, name) if source == "fine_tuning" else kernel_accuracy(entry, name)
            cells.append(ours if paper is None else f"{ours} [{TABLE5[k].get(paper, {}).get(task, '-')}]")
        rows.append([label, *cells])
    return _table([f"k = {k}", *map(paper_name, tasks)], rows)


def table6(study: dict, k: int, tasks: tuple[str, ...]) -> list[str]:
    """Table 6 at ``k``: relative differences of K_row1, K_col1 and K_lora1 to K_θ, p = 1, 2 [the paper's,
    at k = 16 only]."""
    rows = [[f"K_{s}, p={p}", *[difference_cell(study.get((t, k)), s, p, t, k) for t in tasks]]
            for s in TABLE_SUBSETS if s != "full" for p in (1, 2)]
    return _table([f"k = {k}", *map(paper_name, tasks)], rows)


def ablation_table(study: dict) -> list[str]:
    """Row/column selection at k = 16: accuracy % and relative difference (p = 2) per selection."""
    subsets = ["row1", *[s for s in ABLATION_SUBSETS if s.startswith("row")], "col1",
               *[s for s in ABLATION_SUBSETS if s.startswith("col")]]
    header = ["task", *[f"{'row1:first' if s == 'row1' else 'col1:first' if s == 'col1' else s} acc / p=2"
                        for s in subsets]]
    rows = []
    for task in (*SINGLE_TASKS, *PAIR_TASKS):
        entry = study.get((task, 16))
        cells = []
        for s in subsets:
            accuracy = kernel_accuracy(entry, s)
            difference = difference_cell(entry, s, 2, task).split(" [")[0]
            cells.append("pending" if accuracy == "pending" else f"{accuracy} / {difference}")
        rows.append([paper_name(task), *cells])
    return _table(header, rows)


def prediction_balance_table(study: dict) -> list[str]:
    """Per finished task and k whose seeds all record ``eval_confusion``: the evaluation set's largest class
    (its share, %), the share of predictions in it (%, mean (std) over seeds) for zero-shot, the table's
    kernels and Full FT, and the balanced accuracy (mean per-class recall, %) of zero-shot, K_θ and Full FT
    (Full FT's ``-`` until every seed's run records its counts); then one line naming the finished tasks
    recorded before the counts were kept."""
    names = ["zeroshot", *TABLE_SUBSETS]
    header = ["task", "k", "largest class", *[f"{'zero-shot' if n == 'zeroshot' else 'K_θ' if n == 'full' else 'K_' + n} "
                                              "predicts it" for n in names], "Full FT predicts it",
              "balanced acc. zero-shot", "balanced acc. K_θ", "balanced acc. Full FT"]
    rows, missing = [], []
    for k in KS:
        for task in (*SINGLE_TASKS, *PAIR_TASKS):
            per_seed = (study.get((task, k)) or {}).get("results", {}).get("per_seed", [])
            if not per_seed:
                continue
            if not all("eval_confusion" in entry for entry in per_seed):
                missing.append(f"{paper_name(task)} k={k}")
                continue
            counts = {n: [np.array(entry["eval_confusion"][n]) for entry in per_seed] for n in names}
            runs = study[task, k].get("fine_tuning", {}).get("runs", {}).get("full", {})
            if len(runs) == len(per_seed) and all("eval_confusion" in run for run in runs.values()):
                counts["Full FT"] = [np.array(run["eval_confusion"]) for run in runs.values()]
            truth = counts["zeroshot"][0].sum(1)  # rows: the true classes, the same for every seed
            largest = int(truth.argmax())

            def share(name: str) -> str:
                if name not in counts:
                    return "-"
                return _mean_std([c[:, largest].sum() / c.sum() for c in counts[name]], 100, 1)

            def balanced(name: str) -> str:
                if name not in counts:
                    return "-"
                return _mean_std([balanced_accuracy(c) for c in counts[name]], 100, 1)

            label = get_task(task).labels[largest]
            rows.append([paper_name(task), str(k), f"{label} ({100 * truth[largest] / truth.sum():.1f})",
                         *map(share, [*names, "Full FT"]), *map(balanced, ("zeroshot", "full", "Full FT"))])
    lines = _table(header, rows) if rows else ["No finished task records its counts yet."]
    if missing:
        lines += ["", "Finished without counts (recorded before they were kept; `ntk-peft study rocoft --rescore` adds "
                  "them where the kernel stores remain): " + ", ".join(missing) + "."]
    return lines


def cost(entry: dict) -> tuple[float, float]:
    """(kernel hours, fine-tuning hours) recorded in a task's files: the compute seconds stored with the
    kernel and projection blocks, and each run's wall time (training, dev and final evaluation)."""
    kernels = 0.0
    for results in [entry["results"]] if "results" in entry else entry.get("kernel_seeds", []):
        timing = results["timing_s"]
        kernels += timing.get("kernels_recorded", 0.0) + timing.get("projections_recorded", 0.0)
    runs = entry.get("fine_tuning", {}).get("runs", {})
    training = sum(r["train_seconds"] for adapter in runs.values() for r in adapter.values())
    return kernels / 3600, training / 3600


def top_of_grid(per_seed: list[dict]) -> str:
    """How many seeds fitted K_θ at the most regularised λ of the grid (their kernel predictions stay at
    about zero-shot's): ``"n of m"`` over the seeds that record ``lambda_over_scale``, ``"-"`` if none do."""
    factors = [entry["lambda_over_scale"]["full"] for entry in per_seed if "lambda_over_scale" in entry]
    if not factors:
        return "-"
    return f"{sum(bool(np.isclose(f, LAMBDA_GRID[-1], rtol=1e-9)) for f in factors)} of {len(factors)}"


def status_table(study: dict) -> list[str]:
    """What is finished, per task and k, and the CPU hours its files record."""
    rows, totals = [], [0.0, 0.0]
    for k in KS:
        for task in (*SINGLE_TASKS, *PAIR_TASKS):
            entry = study.get((task, k))
            if entry is None:
                rows.append([paper_name(task), str(k), "pending", "0", "-", "-", "-"])
                continue
            results = entry.get("results")
            runs = entry.get("fine_tuning", {}).get("runs", {})
            done = ", ".join(f"{a} {len(runs[a])}" for a in FINE_TUNING_LR if a in runs) or "0"
            hours = cost(entry)
            totals[0] += hours[0]
            totals[1] += hours[1]
            parts = entry.get("kernel_seeds", [])
            first = results or (parts[0] if parts else None)
            evaluated = str(first["per_seed"][0]["n_eval"]) if first else "-"
            per_seed = [e for part in ([results] if results else parts) for e in part["per_seed"]]
            recorded = sum(len(part["seeds"]) for part in parts)  # a record may hold several seeds
            kernels = (f"{len(results['seeds'])} seeds" if results else
                       f"pending ({recorded} seed{'s' * (recorded != 1)} recorded)" if parts else "pending")
            rows.append([paper_name(task), str(k), kernels, done, evaluated, top_of_grid(per_seed),
                         f"{hours[0]:.2f} + {hours[1]:.2f}"])
    rows.append(["all", "", "", "", "", "", f"{totals[0]:.2f} + {totals[1]:.2f} = {sum(totals):.2f}"])
    return _table(["task", "k", "kernels", "fine-tuning runs (adapter seeds)", "n eval", "K_θ at λ grid top (seeds)",
                   "CPU hours kernels + FT"], rows)


def seed_table(study: dict, task: str, k: int) -> list[str]:
    """One task's numbers seed by seed, the ones its Reading quotes: each kernel's and zero-shot's accuracy
    (%), λ over the kernel's scale (``lambda_over_scale``; 10 is the grid's top), K_θ's balanced accuracy
    (``-`` without counts), and each fine-tuning run's accuracy (``-`` where not run yet)."""
    entry = study.get((task, k))
    if entry is None or "results" not in entry:
        raise UserError(f"{paper_name(task)} k={k} has no combined results.json yet")
    runs = entry.get("fine_tuning", {}).get("runs", {})
    names = ["zeroshot", *TABLE_SUBSETS]
    header = ["seed", *["zero-shot" if n == "zeroshot" else "K_θ" if n == "full" else f"K_{n}" for n in names],
              *[f"λ/scale {'K_θ' if s == 'full' else 'K_' + s}" for s in TABLE_SUBSETS], "balanced K_θ",
              *[FINE_TUNING_NAMES[a] for a in FINE_TUNING_LR]]
    rows = []
    for record in entry["results"]["per_seed"]:
        seed = str(record["seed"])
        balanced = (f"{100 * balanced_accuracy(record['eval_confusion']['full']):.1f}" if "eval_confusion" in record
                    else "-")
        scales = record.get("lambda_over_scale", {})
        rows.append([seed, *[f"{100 * record['accuracy'][n]:.1f}" for n in names],
                     *[f"{scales[s]:g}" if s in scales else "-" for s in TABLE_SUBSETS], balanced,
                     *[f"{100 * runs[a][seed]['eval_accuracy']:.1f}" if seed in runs.get(a, {}) else "-"
                       for a in FINE_TUNING_LR]])
    return _table(header, rows)


def report_section(folder: str | Path) -> str:
    """The README's generated part (Markdown), from the files in ``folder`` alone."""
    study = load_study(folder)
    lines = [BEGIN, "", "### Table 5: accuracy (%), mean (std) over seeds [RoCoFT, RoBERTa-base]", ""]
    for k in KS:
        for tasks in (SINGLE_TASKS, PAIR_TASKS):
            lines += [*table5(study, k, tasks), ""]
    lines += ["### Table 6: relative difference to K_θ, mean (std) over seeds [RoCoFT, k = 16 only]", ""]
    for k in KS:
        for tasks in (SINGLE_TASKS, PAIR_TASKS):
            lines += [*table6(study, k, tasks), ""]
    lines += ["### Row and column selection (k = 16): accuracy % and relative difference to K_θ (p = 2)", "",
              *ablation_table(study), "",
              "### Predictions on the evaluation set: share in its largest class and balanced accuracy (%)", "",
              *prediction_balance_table(study), "", "### Status and cost", "", *status_table(study), "", END]
    return "\n".join(lines)


def replace_section(readme: str, section: str) -> str:
    """``readme`` with the text from `BEGIN` to `END` replaced by ``section`` (appended when absent)."""
    if BEGIN in readme and END in readme:
        head, rest = readme.split(BEGIN, 1)
        return head + section + rest.split(END, 1)[1]
    return readme.rstrip("\n") + "\n\n" + section + "\n"


def draw_figures(folder: str | Path, only: set[str] | None = None) -> list[Path]:
    """Per task and k with figure data (``only`` these ``<TASK>-k<k>`` folders, if given): the train-kernel
    heatmaps (k = 16) and spectra, under ``figures/``."""
    from ntk_peft.plotting import scalar_heatmaps, spectra_plot

    folder = Path(folder)
    out = folder / "figures"
    out.mkdir(exist_ok=True)
    paths = []
    for path in sorted(folder.glob("*-k*/figure_data.json")):
        if only is not None and path.parent.name not in only:
            continue
        data = json.loads(path.read_text())
        name = path.parent.name
        results = json.loads((path.parent / "results.json").read_text())
        title = f"{paper_name(results['task'])}, {results['model']}, k={results['k']}, seed {data['seed']}"
        chosen = [s for s in TABLE_SUBSETS if s in data["spectra"]]
        if data["heatmaps"]:
            paths.append(scalar_heatmaps({s: np.array(data["heatmaps"][s]) for s in chosen}, np.array(data["labels"]),
                                         out / f"{name}-heatmaps.png", title))
        paths.append(spectra_plot({s: data["spectra"][s] for s in data["spectra"]}, out / f"{name}-spectra.png",
                                  title))
    return paths


def write_report(folder: str | Path, figures: bool | set[str] = True) -> Path:
    """Rewrite the generated part of ``folder/README.md``; ``figures``: redraw every figure (True), none
    (False) or those of a set of ``<TASK>-k<k>`` folders."""
    folder = Path(folder)
    readme = folder / "README.md"
    text = readme.read_text() if readme.is_file() else "# RoCoFT tables 5 and 6 on SmolLM2-135M\n"
    write_text(readme, replace_section(text, report_section(folder)))
    if figures:
        draw_figures(folder, None if figures is True else set(figures))
    return readme
