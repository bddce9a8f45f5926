"""Kernel eigenvalue spectra (RoCoFT figure 6), from an ntk-compare results folder.

    python figures/kernel_spectra.py RESULTS_DIR [--seed S] [--out FILE]
"""

from ntk_peft.plotting import figure_script

if __name__ == "__main__":
    print(figure_script("spectra"))
