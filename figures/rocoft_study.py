"""The RoCoFT study's README tables (5, 6, selection ablation, status) and figures, from its results folder alone.

    python figures/rocoft_study.py [RESULTS_DIR]   (default results/rocoft-smollm2)

Same as ``ntk-peft study rocoft --report``; the tables between the README's GENERATED markers are
rewritten, the text around them is kept, and figures/ gets each task's heatmaps and spectra.
"""

import argparse
from pathlib import Path

from ntk_peft.experiments.rocoft_report import write_report

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, default=Path("results/rocoft-smollm2"))
    args = parser.parse_args()
    print(f"report: {write_report(args.results)}")
