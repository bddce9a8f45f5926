"""Figures of kernels (matplotlib, Agg): heatmaps grouped by class and eigenvalue spectra."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(name: str) -> str:
    return "K_full" if name == "full" else f"K_{name}"


def kernel_heatmaps(kernels: dict[str, np.ndarray], labels: np.ndarray, path: str | Path, title: str = "") -> Path:
    """One heatmap per kernel, train examples sorted by class.

    Shown: for two classes the kernel of the logit difference f_1 − f_0
    (K11 − K10 − K01 + K00, the kernel binary KLR uses), else Σ_c K[i, j, c, c].
    Entries are capped at the 95th percentile of their absolute values (as
    RoCoFT figure 4), so a few large entries do not wash out the structure.
    """
    from ntk_peft.solvers.estimators import scalar_kernel

    plt = _pyplot()
    order = np.argsort(labels, kind="stable")
    boundaries = np.flatnonzero(np.diff(labels[order])) + 0.5
    fig, axes = plt.subplots(1, len(kernels), figsize=(4.2 * len(kernels), 4.0), squeeze=False)
    for ax, (name, kernel) in zip(axes[0], kernels.items()):
        matrix = scalar_kernel(np.asarray(kernel))[np.ix_(order, order)]
        cap = np.percentile(np.abs(matrix), 95)
        image = ax.imshow(np.clip(matrix, -cap, cap), cmap="RdBu_r", vmin=-cap, vmax=cap, interpolation="nearest")
        for b in boundaries:
            ax.axhline(b, color="white", lw=0.8)
            ax.axvline(b, color="white", lw=0.8)
        ax.set_title(_label(name) + (" (logit difference)" if np.asarray(kernel).shape[2] == 2 else " (trace)"))
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

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    for name, kernel in kernels.items():
        values = eigenvalues(kernel)
        values = np.clip(values / values[0], 1e-16, None)
        ax.semilogy(np.arange(1, len(values) + 1), values, marker=".", label=_label(name))
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
