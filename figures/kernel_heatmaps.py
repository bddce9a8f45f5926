"""Kernel heatmaps (RoCoFT figure 4), train examples grouped by class, from an ntk-compare results folder.

    python figures/kernel_heatmaps.py RESULTS_DIR [--seed S] [--out FILE]
"""

from ntk_peft.plotting import figure_script

if __name__ == "__main__":
    print(figure_script("heatmaps"))
