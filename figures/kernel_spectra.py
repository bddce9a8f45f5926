"""Kernel eigenvalue spectra (RoCoFT figure 6) from an ntk-compare results folder.

    python figures/kernel_spectra.py RESULTS_DIR [--seed S] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ntk_peft.plotting import kernel_spectra, load_train_kernels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    folder = Path(args.results)
    results = json.loads((folder / "results.json").read_text())
    seed = args.seed if args.seed is not None else results["seeds"][0]
    kernels, _ = load_train_kernels(folder / f"seed-{seed}")
    out = Path(args.out or folder / "figures" / "kernel_spectra.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    print(kernel_spectra(kernels, out, f"{results['task']}, {results['model']}, seed {seed}"))


if __name__ == "__main__":
    main()
