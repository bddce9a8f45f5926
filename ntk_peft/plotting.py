"""Figures (matplotlib, Agg): kernel heatmaps grouped by class, kernel eigenvalue spectra, and ΔW rank
and spectra from training runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def kernel_label(name: str) -> str:
    """``K_full``, ``K_row1``, ... for a kernel subset name."""
    return "K_full" if name == "full" else f"K_{name}"


def kernel_heatmaps(kernels: dict[str, np.ndarray], labels: np.ndarray, path: str | Path, title: str = "") -> Path:
    """One heatmap per kernel ``[n, n, C, C]``, train examples sorted by class.

    Shown: for two classes the kernel of the logit difference f_1 − f_0
    (K11 − K10 − K01 + K00, the kernel binary KLR uses), else Σ_c K[i, j, c, c].
    Entries are capped at the 95th percentile of their absolute values (as
    RoCoFT figure 4), so a few large entries do not wash out the structure.
    """
    from ntk_peft.solvers.estimators import scalar_kernel

    return scalar_heatmaps({name: scalar_kernel(np.asarray(kernel)) for name, kernel in kernels.items()}, labels,
                           path, title)


def scalar_heatmaps(matrices: dict[str, np.ndarray], labels: np.ndarray, path: str | Path, title: str = "") -> Path:
    """`kernel_heatmaps` of kernels already reduced to ``[n, n]`` (`scalar_kernel`): for two classes the
    logit difference's, else the trace over classes."""
    plt = _pyplot()
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    boundaries = np.flatnonzero(np.diff(labels[order])) + 0.5
    reduction = " (logit difference)" if len(np.unique(labels)) <= 2 else " (trace)"
    fig, axes = plt.subplots(1, len(matrices), figsize=(4.2 * len(matrices), 4.0), squeeze=False)
    for ax, (name, matrix) in zip(axes[0], matrices.items()):
        matrix = np.asarray(matrix)[np.ix_(order, order)]
        cap = np.percentile(np.abs(matrix), 95)
        image = ax.imshow(np.clip(matrix, -cap, cap), cmap="RdBu_r", vmin=-cap, vmax=cap, interpolation="nearest")
        for b in boundaries:
            ax.axhline(b, color="white", lw=0.8)
            ax.axvline(b, color="white", lw=0.8)
        ax.set_title(kernel_label(name) + reduction)
        ax.set_xlabel("train example (sorted by class)")
        ax.set_ylabel("train example (sorted by class)")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def kernel_spectra(kernels: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """Eigenvalues (descending, log scale) of each flattened train kernel, scaled by the largest."""
    from ntk_peft.analysis import eigenvalues

    spectra = {}
    for name, kernel in kernels.items():
        values = eigenvalues(kernel)
        spectra[name] = values / values[0]
    return spectra_plot(spectra, path, title)


def spectra_plot(spectra: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """`kernel_spectra` of eigenvalues already scaled by the largest (descending)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    for name, values in spectra.items():
        values = np.clip(np.asarray(values, dtype=float), 1e-16, None)
        ax.semilogy(np.arange(1, len(values) + 1), values, marker=".", label=kernel_label(name))
    ax.set_xlabel("eigenvalue index")
    ax.set_ylabel("eigenvalue / largest eigenvalue")
    ax.legend()
    ax.set_title(title or "eNTK spectra")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def load_train_kernels(seed_folder: str | Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Train kernels and labels written by ``ntk-compare`` into ``seed-<s>/``."""
    from safetensors.numpy import load_file

    data = load_file(str(Path(seed_folder) / "train_kernels.safetensors"))
    kernels = {key[2:]: value for key, value in data.items() if key.startswith("K/")}
    order = sorted(kernels, key=lambda name: (name != "full", name))  # K_full first
    return {name: kernels[name] for name in order}, data["labels"]


def figure_script(kind: str, argv: list[str] | None = None) -> Path:
    """The shared command line of ``figures/kernel_heatmaps.py`` and ``figures/kernel_spectra.py``.

    ``kind`` is ``heatmaps`` or ``spectra``; arguments: RESULTS_DIR [--seed S] [--out FILE].
    """
    import argparse
    import json

    parser = argparse.ArgumentParser(description=f"kernel {kind} from an ntk-compare results folder")
    parser.add_argument("results")
    parser.add_argument("--seed", type=int, default=None, help="default: the run's first seed")
    parser.add_argument("--out", default=None, help=f"default: RESULTS_DIR/figures/kernel_{kind}.png")
    args = parser.parse_args(argv)
    folder = Path(args.results)
    results = json.loads((folder / "results.json").read_text())
    seed = args.seed if args.seed is not None else results["seeds"][0]
    kernels, labels = load_train_kernels(folder / f"seed-{seed}")
    out = Path(args.out or folder / "figures" / f"kernel_{kind}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    title = f"{results['task']}, {results['model']}, seed {seed}"
    if kind == "heatmaps":
        return kernel_heatmaps(kernels, labels, out, title)
    return kernel_spectra(kernels, out, title)


def load_delta_w_run(folder: str | Path) -> dict:
    """A training run's ΔW tracking: ``{"label", "rows": [(step, layer, metric, value)], "summary"}``."""
    import csv
    import json

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    with (folder / "delta_w.csv").open(newline="") as handle:
        rows = [(int(r["step"]), r["layer"], r["metric"], float(r["value"])) for r in csv.DictReader(handle)]
    summary = json.loads((folder / "delta_w_summary.json").read_text())
    return {"label": config["adapter"], "rows": rows, "summary": summary}


def median_over_layers(rows, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, median over layers of ``metric`` at each step)."""
    by_step: dict[int, list[float]] = {}
    for step, _, name, value in rows:
        if name == metric:
            by_step.setdefault(step, []).append(value)
    steps = np.array(sorted(by_step))
    return steps, np.array([np.median(by_step[s]) for s in steps])


def delta_w_rank(runs: list[dict], path: str | Path, title: str = "") -> Path:
    """Median over layers of ΔW's numerical rank and effective rank against the step, one line per run
    (LoRMA figure 7); LoRMA runs also show the rank of the inflated matrix I(BA), dotted."""
    plt = _pyplot()
    panels = (("rank_machine", "rank, tol. max(m,n)·eps·σ_max"), ("rank_relative", "rank, tol. 1e-3·σ_max"),
              ("effective_rank", "effective rank"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 4.0))
    for ax, (metric, label) in zip(axes, panels):
        for index, run in enumerate(runs):  # markers and widths differ, so coinciding runs stay visible
            steps, values = median_over_layers(run["rows"], metric)
            line, = ax.plot(steps, np.maximum(values, 0.5), marker="osD^vx<>"[index % 8], ms=7 - 4 * index / len(runs),
                            lw=2.4 - 1.4 * index / len(runs), label=run["label"])
            steps, inflated = median_over_layers(run["rows"], f"inflated_{metric}")
            if steps.size:
                ax.plot(steps, np.maximum(inflated, 0.5), ls=":", color=line.get_color(),
                        label=f"{run['label']} I(BA)")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.set_title(f"median over layers: {label}", fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()  # one legend below the panels, clear of the lines
    columns = min(len(labels), 6)
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=8, frameon=False)
    fig.suptitle(title or "rank of ΔW during training (log scale; rank 0 drawn at 0.5)")
    legend_rows = -(-len(labels) // columns)
    fig.tight_layout(rect=(0, 0.03 + 0.055 * legend_rows, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def pick_layer(runs: list[dict], layer: str | None) -> str:
    """The first layer (in the first run's order) tracked by every run whose name contains ``layer``;
    by default a query projection in the middle of the network."""
    common = [name for name in runs[0]["summary"]["singular_values"]
              if all(name in r["summary"]["singular_values"] for r in runs)]
    if not common:
        raise ValueError("the runs share no tracked layer")
    if layer is not None:
        chosen = [name for name in common if layer in name]
        if not chosen:
            raise ValueError(f"no layer tracked by every run contains {layer!r}")
        return chosen[0]
    queries = [name for name in common if "q_proj" in name or "query" in name] or common
    return queries[len(queries) // 2]


def delta_w_spectra(runs: list[dict], path: str | Path, layer: str | None = None, title: str = "") -> Path:
    """Singular values of ΔW at the end of each run for one layer, scaled by the largest (log scale)."""
    plt = _pyplot()
    name = pick_layer(runs, layer)
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    for run in runs:
        sigma = np.asarray(run["summary"]["singular_values"][name], dtype=np.float64)
        if sigma.size == 0 or sigma[0] == 0:
            continue  # ΔW = 0 (e.g. BitFit has no weight update)
        ax.semilogy(np.arange(1, sigma.size + 1), np.clip(sigma / sigma[0], 1e-12, None), label=run["label"])
    ax.set_xlabel("singular value index")
    ax.set_ylabel("σ_i / σ_1")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title or f"ΔW spectra at the end: {name}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def delta_w_figure_script(kind: str, argv: list[str] | None = None) -> Path:
    """The shared command line of ``figures/delta_w_rank.py`` and ``figures/delta_w_spectra.py``.

    ``kind`` is ``rank`` or ``spectra``; arguments: RUN_DIR [RUN_DIR ...] [--layer TEXT] [--out FILE].
    """
    import argparse

    parser = argparse.ArgumentParser(description=f"ΔW {kind} from ntk-peft train run folders")
    parser.add_argument("runs", nargs="+", help="training run folders (delta_w.csv, delta_w_summary.json)")
    parser.add_argument("--out", default=None, help=f"default: delta_w_{kind}.png beside the first run")
    if kind == "spectra":
        parser.add_argument("--layer", default=None, help="a layer name or part of one (default: a middle q_proj)")
    args = parser.parse_args(argv)
    missing = [r for r in args.runs if not (Path(r) / "delta_w.csv").is_file()]
    if missing:
        parser.error(f"not a tracked training run: {missing[0]}")
    runs = [load_delta_w_run(r) for r in args.runs]
    out = Path(args.out or Path(args.runs[0]).parent / f"delta_w_{kind}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    if kind == "rank":
        return delta_w_rank(runs, out)
    try:
        return delta_w_spectra(runs, out, args.layer)
    except ValueError as error:
        parser.error(str(error))


def bounds_figure(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Relative error against parameter count for every class (``ntk-peft bounds`` rows): one faint line per
    single matrix, the median over matrices per budget in bold; CP and pooled stacks as separate markers."""
    plt = _pyplot()
    colors = {"lowrank": "C0", "monarch": "C1", "rows": "C2", "cols": "C3", "cp": "C4"}
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    singles = [r for r in rows if "stack" not in r["matrix"]]
    for kind, color in colors.items():
        of_kind = [r for r in singles if r["class"] == kind]
        for name in sorted({r["matrix"] for r in of_kind}):
            line = sorted((r["params"], r["relative_error"]) for r in of_kind if r["matrix"] == name)
            ax.plot(*zip(*line), color=color, alpha=0.15, lw=0.8)
        budgets = sorted({r["budget_rank"] for r in of_kind})
        if budgets:
            medians = [(np.median([r["params"] for r in of_kind if r["budget_rank"] == b]),
                        np.median([r["relative_error"] for r in of_kind if r["budget_rank"] == b])) for b in budgets]
            ax.plot(*zip(*medians), color=color, marker="o", lw=2, label=f"{kind} (median)")
    stacked = sorted((r["params"], r["relative_error"]) for r in rows if "stack" in r["matrix"] and r["class"] == "cp")
    if stacked:
        ax.scatter(*zip(*stacked), color=colors["cp"], marker="x", label="cp on a stack of layers (its params)")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("relative error ‖M − P(M)‖_F / ‖M‖_F")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title(title or "best error at equal parameter budgets")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def bounds_figure_script(argv: list[str] | None = None) -> Path:
    """``figures/monarch_vs_lowrank.py BOUNDS_DIR [--out FILE]``: redraw from ``bounds.csv``."""
    import argparse
    import csv

    parser = argparse.ArgumentParser(description="error against parameters per adapter class, from ntk-peft bounds")
    parser.add_argument("folder", help="an ntk-peft bounds output folder (bounds.csv)")
    parser.add_argument("--out", default=None, help="default: FOLDER/monarch_vs_lowrank.png")
    args = parser.parse_args(argv)
    source = Path(args.folder) / "bounds.csv"
    if not source.is_file():
        parser.error(f"no bounds.csv in {args.folder}")
    with source.open(newline="") as handle:
        rows = [dict(r, params=int(r["params"]), budget_rank=int(r["budget_rank"]),
                     relative_error=float(r["relative_error"])) for r in csv.DictReader(handle)]
    return bounds_figure(rows, args.out or Path(args.folder) / "monarch_vs_lowrank.png", Path(args.folder).name)
